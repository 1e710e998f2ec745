package wsio

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// poller watches parked connections for input with one epoll instance, so
// that an idle connection needs no goroutine at all: its reader exits when
// there is nothing to read, and the poller calls the connection's Waker
// (which starts a new reader) when the client sends something (a
// frame, a pong, or the end of the connection).
//
// Connections are registered with EPOLLONESHOT: one event per park, and
// the reader re-arms only when it parks again, so a connection never has
// two readers.
type poller struct {
	epfd   int
	wakeR  int // read end of a pipe that stops run
	wakeW  int
	mu     sync.Mutex
	conns  map[int32]*Conn
	nextID int32
	done   chan struct{}
}

// pollerStopID is the epoll data of the stop pipe; connections get ids
// from 1.
const pollerStopID = 0

func newPoller() (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	var pipe [2]int
	if err := syscall.Pipe2(pipe[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		_ = syscall.Close(epfd)
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: pollerStopID}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, pipe[0], &ev); err != nil {
		_ = syscall.Close(epfd)
		_ = syscall.Close(pipe[0])
		_ = syscall.Close(pipe[1])
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	p := &poller{epfd: epfd, wakeR: pipe[0], wakeW: pipe[1], conns: make(map[int32]*Conn), done: make(chan struct{})}
	go p.run()
	return p, nil
}

func (p *poller) run() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == pollerStopID {
				return
			}
			p.mu.Lock()
			c := p.conns[ev.Fd]
			p.mu.Unlock()
			if c != nil {
				c.waker.Wake()
			}
		}
	}
}

// add gives c an id; the caller is c's reader, before it first parks.
func (p *poller) add(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		p.nextID++
		if p.nextID <= pollerStopID {
			p.nextID = pollerStopID + 1
		}
		if p.conns[p.nextID] == nil {
			break
		}
	}
	c.pollID = p.nextID
	p.conns[c.pollID] = c
}

// remove forgets c. The kernel drops the registration when the socket
// closes; a late event for c's id finds nothing.
func (p *poller) remove(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.pollID != 0 && p.conns[c.pollID] == c {
		delete(p.conns, c.pollID)
	}
}

// arm asks for one event when c's socket has input or is closed.
func (p *poller) arm(c *Conn) error {
	raw, err := c.out.rawConn()
	if err != nil {
		return err
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: c.pollID}
	// Once armed, another reader may start at any moment: nothing of c is
	// touched after epoll_ctl.
	op := syscall.EPOLL_CTL_MOD
	if !c.pollAdded {
		op = syscall.EPOLL_CTL_ADD
		c.pollAdded = true
	}
	var ctlErr error
	err = raw.Control(func(fd uintptr) {
		ctlErr = syscall.EpollCtl(p.epfd, op, int(fd), &ev)
		switch {
		case op == syscall.EPOLL_CTL_ADD && errors.Is(ctlErr, syscall.EEXIST):
			ctlErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		case op == syscall.EPOLL_CTL_MOD && errors.Is(ctlErr, syscall.ENOENT):
			ctlErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err == nil {
		err = ctlErr
	}
	if err != nil {
		return fmt.Errorf("arming epoll: %w", err)
	}
	return nil
}

// inputReady reports whether c's socket has bytes (or an end) to read,
// without blocking, so that a reader with more to do need not park.
func inputReady(c *Conn) bool {
	raw, err := c.out.rawConn()
	if err != nil {
		return true // let the reader find out
	}
	ready := true
	var b [1]byte
	_ = raw.Control(func(fd uintptr) {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ready = n > 0 || err == nil || !errors.Is(err, syscall.EAGAIN)
	})
	return ready
}

// stop ends the poller; parked connections are closed by their owner.
func (p *poller) stop() {
	_, _ = syscall.Write(p.wakeW, []byte{1})
	<-p.done
	_ = syscall.Close(p.epfd)
	_ = syscall.Close(p.wakeR)
	_ = syscall.Close(p.wakeW)
}
