//go:build !linux

package wsio

import "errors"

// poller is Linux only (epoll); elsewhere every connection keeps its
// reader goroutine.
type poller struct{}

func newPoller() (*poller, error) { return nil, errors.New("no epoll on this system") }

func (p *poller) add(*Conn)       {}
func (p *poller) remove(*Conn)    {}
func (p *poller) arm(*Conn) error { return errors.New("no epoll on this system") }
func (p *poller) stop()           {}

func inputReady(*Conn) bool { return true }
