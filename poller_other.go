//go:build !linux

package chatroom

import "errors"

// poller is Linux only (epoll); elsewhere every connection keeps its
// reader goroutine.
type poller struct{}

func newPoller() (*poller, error) { return nil, errors.New("no epoll on this system") }

func (p *poller) add(*conn)       {}
func (p *poller) remove(*conn)    {}
func (p *poller) arm(*conn) error { return errors.New("no epoll on this system") }
func (p *poller) stop()           {}

func inputReady(*conn) bool { return true }
