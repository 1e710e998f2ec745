package chatroom

import (
	"bufio"
	"errors"
	"reflect"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// The read side of a connection. While the client sends nothing, the
// connection has no reader goroutine: the reader parks the connection with
// the hub's poller and exits, and the poller starts a new reader when input
// arrives. Idle members then cost a few KiB of heap and no stack.

// errStopReading ends a reader that has closed the connection itself.
var errStopReading = errors.New("connection closed by the server")

// readerOf returns gorilla's read buffer of ws when it is br, the one the
// handler's hijacker made: the reader must see what gorilla has buffered
// before it may park, so parking is only on when it is.
func readerOf(ws *websocket.Conn, br *bufio.Reader) *bufio.Reader {
	if br == nil {
		return nil
	}
	f := reflect.ValueOf(ws).Elem().FieldByName("br")
	if !f.IsValid() || f.Kind() != reflect.Pointer || f.Pointer() != reflect.ValueOf(br).Pointer() {
		return nil
	}
	return br
}

// readBurst reads what the client has sent, then parks the connection, or
// ends it when the connection fails or breaks a rule.
func (c *conn) readBurst() {
	for {
		if c.canPark() && c.br.Buffered() == 0 && !inputReady(c) && c.park() {
			return
		}
		if err := c.readFrame(); err != nil {
			c.noteReadError(err)
			c.teardown()
			return
		}
	}
}

func (c *conn) canPark() bool { return c.poller != nil && c.br != nil && !c.noPark }

// readFrame reads and acts on one frame: a ping or pong at the head of the
// buffer, or else one message.
func (c *conn) readFrame() error {
	_ = c.ws.SetReadDeadline(time.Now().Add(2 * c.opts.pingInterval))
	if c.br != nil && c.readControl() {
		return nil
	}
	kind, data, err := c.ws.ReadMessage()
	if err != nil {
		return err
	}
	c.heard()
	if kind != websocket.TextMessage {
		c.closeWith(websocket.CloseUnsupportedData, "binary frames are not supported", dropBinary)
		return errStopReading
	}
	if !utf8.Valid(data) {
		c.closeWith(websocket.CloseInvalidFramePayloadData, "text frame is not valid UTF-8", dropBadUTF8)
		return errStopReading
	}
	c.handleFrame(data)
	return nil
}

// readControl consumes a whole ping or pong frame at the head of the read
// buffer, between messages. gorilla's ReadMessage would handle it too, but
// then wait for a data frame, and a reader woken by a pong could not park
// again.
func (c *conn) readControl() bool {
	hdr, err := c.br.Peek(2)
	if err != nil {
		return false // gorilla reports it
	}
	const (
		finBit, rsvBits, opBits = 0x80, 0x70, 0x0f
		maskBit, lenBits        = 0x80, 0x7f
	)
	op, n := int(hdr[0]&opBits), int(hdr[1]&lenBits)
	if hdr[0]&finBit == 0 || hdr[0]&rsvBits != 0 || hdr[1]&maskBit == 0 || n > 125 ||
		op != websocket.PingMessage && op != websocket.PongMessage {
		return false
	}
	frame, err := c.br.Peek(2 + 4 + n)
	if err != nil {
		return false
	}
	c.heard()
	if op == websocket.PingMessage {
		var payload [125]byte
		mask := frame[2:6]
		for i, b := range frame[6:] {
			payload[i] = b ^ mask[i&3]
		}
		err := c.ws.WriteControl(websocket.PongMessage, payload[:n], time.Now().Add(closeWait))
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			var netErr interface{ Timeout() bool }
			if !errors.As(err, &netErr) || !netErr.Timeout() {
				return false // gorilla reports the connection's state
			}
		}
	}
	_, _ = c.br.Discard(len(frame))
	return true
}

// heard notes that the client is alive.
func (c *conn) heard() { c.lastHeard.Store(time.Now().UnixNano()) }

// silentFor is how long the client has sent nothing, not even a pong.
func (c *conn) silentFor() time.Duration {
	return time.Since(time.Unix(0, c.lastHeard.Load()))
}

// park hands the connection to the poller and reports whether the reader
// must exit. The connection is not parked once it is closing: its reader
// then sees the close.
func (c *conn) park() bool {
	c.mu.Lock()
	if c.closing || c.tornDown {
		c.mu.Unlock()
		return false
	}
	c.parked = true
	c.mu.Unlock()
	if err := c.poller.arm(c); err != nil {
		c.mu.Lock()
		stillParked := c.parked
		c.parked = false
		c.mu.Unlock()
		if stillParked {
			c.logger.Debug("cannot park connection; reading on a goroutine", zap.Error(err))
			c.noPark = true
			return false
		}
		return true // finishClose has taken over
	}
	return true
}

// unpark starts a reader for a parked connection that has input.
func (c *conn) unpark() {
	c.mu.Lock()
	if !c.parked {
		c.mu.Unlock()
		return
	}
	c.parked = false
	c.mu.Unlock()
	go c.readBurstFn()
}
