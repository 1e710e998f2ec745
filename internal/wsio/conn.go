package wsio

import (
	"bufio"
	"time"

	"github.com/gorilla/websocket"
)

// Conn is one WebSocket connection of a Transport. Its writes are batched;
// its reads go through gorilla (WS), and between messages it can park: Arm
// asks for one call of the Waker given to Watch when the client sends
// something, and the caller's reader may then exit.
//
// The read-side methods (ReadControl, Watch, Idle, Arm) are for the one
// reader the owner runs at a time.
type Conn struct {
	ws  *websocket.Conn
	out *batchConn    // ws's net.Conn, which the hijacker made
	br  *bufio.Reader // gorilla's read buffer when it is out's; else nil: no parking
	t   *Transport

	// deflateMin is the shortest payload sent compressed; 0 when the
	// connection did not negotiate permessage-deflate.
	deflateMin int
	// limit is the largest message, inflated, that ReadMessage takes.
	limit int64

	// The reader's: the poller registration.
	poller    *poller
	waker     Waker
	pollID    int32
	pollAdded bool
	noPark    bool
}

// Waker is told that a parked connection has input (or was closed).
type Waker interface {
	// Wake runs on the poller's goroutine: it must not block.
	Wake()
}

func newConn(ws *websocket.Conn, out *batchConn, t *Transport) Conn {
	out.upgraded()
	return Conn{ws: ws, out: out, br: readerOf(ws, out.br), t: t}
}

// WS is the gorilla connection, for the read deadline and the pong
// handler. Messages are read, and writes made, through Conn.
func (c *Conn) WS() *websocket.Conn { return c.ws }

// WriteFrames writes frames, and a ping if ping is set, within WriteWait,
// in as few system calls as their size allows. It must not run
// concurrently with itself. Once a close frame has gone out it writes
// nothing and returns websocket.ErrCloseSent.
func (c *Conn) WriteFrames(frames []*Frame, ping bool) error {
	deadline := time.Now().Add(WriteWait)
	c.out.begin(deadline)
	err := c.writeFrames(frames, ping, deadline)
	if ferr := c.out.flush(); err == nil {
		err = ferr
	}
	return err
}

func (c *Conn) writeFrames(frames []*Frame, ping bool, deadline time.Time) error {
	for _, f := range frames {
		wire := f.wire
		if c.compresses(f) {
			wire = f.compressed(&c.t.zs)
		}
		if err := c.out.writeFrame(wire); err != nil {
			return err
		}
	}
	if ping {
		return c.ws.WriteControl(websocket.PingMessage, nil, deadline)
	}
	return nil
}

// compresses reports whether the connection sends f compressed: it
// negotiated compression and f is not too short for it.
func (c *Conn) compresses(f *Frame) bool {
	return c.deflateMin > 0 && len(f.wire)-f.off >= c.deflateMin
}

// Precompress makes f's compressed form now when this connection would
// send f compressed. A broadcaster calls it before it queues f, so that the
// frame is compressed on its goroutine, once, before any member's writer
// runs: otherwise the writers of the members that negotiated compression
// would wait in line behind the first of them, each a goroutine parked and
// woken. It may run concurrently with WriteFrames.
func (c *Conn) Precompress(f *Frame) {
	if c.compresses(f) {
		f.compressed(&c.t.zs)
	}
}

// CloseWith sends a close frame with code and text, within CloseWait, and
// closes the socket. It may run concurrently with WriteFrames.
func (c *Conn) CloseWith(code int, text string) {
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(CloseWait))
	_ = c.ws.Close()
}

// Close closes the socket without a close frame.
func (c *Conn) Close() error { return c.ws.Close() }

// Watch registers the connection with the transport's poller, with the
// Waker that Arm's event calls. It reports whether the connection can park:
// false when there is no poller or gorilla's buffer is hidden.
func (c *Conn) Watch(w Waker) bool {
	if c.br == nil {
		return false
	}
	c.poller = c.t.poller()
	if c.poller == nil {
		return false
	}
	c.waker = w
	c.poller.add(c)
	return true
}

// Unwatch forgets the connection in the poller; a late event finds nothing.
func (c *Conn) Unwatch() {
	if c.poller != nil {
		c.poller.remove(c)
	}
}

// CanPark reports whether the reader may park: the connection is watched
// and parking has not failed before.
func (c *Conn) CanPark() bool { return c.poller != nil && c.br != nil && !c.noPark }

// Idle reports whether nothing waits to be read, neither in gorilla's
// buffer nor on the socket. Only then may the reader park.
func (c *Conn) Idle() bool { return c.br != nil && c.br.Buffered() == 0 && !inputReady(c) }

// Arm asks for one call of the Waker when the socket has input or is
// closed. Once it returns nil the Waker may run at any moment,
// on another goroutine: the caller's reader must exit. On an error parking
// is off for good and the reader carries on.
func (c *Conn) Arm() error {
	if err := c.poller.arm(c); err != nil {
		c.noPark = true
		return err
	}
	return nil
}
