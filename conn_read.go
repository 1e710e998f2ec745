package chatroom

import (
	"errors"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// The read side of a connection. While the client sends nothing, the
// connection has no reader goroutine: the reader parks the connection with
// the transport's poller (internal/wsio) and exits, and the poller starts a
// new reader when input arrives. Idle members then cost a few KiB of heap and no stack.

// errStopReading ends a reader that has closed the connection itself.
var errStopReading = errors.New("connection closed by the server")

// readBurst reads what the client has sent, then parks the connection, or
// ends it when the connection fails or breaks a rule.
func (c *conn) readBurst() {
	for {
		if c.parkIfIdle() {
			return
		}
		if err := c.readFrame(); err != nil {
			c.noteReadError(err)
			c.teardown()
			return
		}
	}
}

// readFrame reads and acts on one frame: a ping or pong at the head of the
// buffer, or else one message.
func (c *conn) readFrame() error {
	_ = c.ws.SetReadDeadline(time.Now().Add(2 * c.opts.pingInterval))
	// A ping or pong between messages is consumed beside gorilla, so that
	// a reader woken by one can park again (see internal/wsio).
	if c.wc.ReadControl() {
		c.heard()
		return nil
	}
	kind, data, err := c.wc.ReadMessage()
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

// parkIfIdle parks the connection when it can park and nothing waits to
// be read, and reports whether it did: the reader must then exit.
func (c *conn) parkIfIdle() bool {
	return c.wc.CanPark() && c.wc.Idle() && c.park()
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
	if err := c.wc.Arm(); err != nil {
		c.mu.Lock()
		stillParked := c.parked
		c.parked = false
		c.mu.Unlock()
		if stillParked {
			c.debug("cannot park connection; reading on a goroutine", zap.Error(err))
			return false
		}
		return true // finishClose has taken over
	}
	return true
}

// Wake implements wsio.Waker: it starts a reader for a parked connection
// that has input.
func (c *conn) Wake() {
	c.mu.Lock()
	if !c.parked {
		c.mu.Unlock()
		return
	}
	c.parked = false
	c.mu.Unlock()
	go c.readBurstFn()
}

// noteReadError counts the ways a read ends that are the server's doing.
func (c *conn) noteReadError(err error) {
	var netErr interface{ Timeout() bool }
	switch {
	case errors.Is(err, wsio.ErrBadDeflate):
		// wsio has sent close 1007 already.
		c.hub.metrics.dropped.WithLabelValues(dropBadDeflate).Inc()
		c.mu.Lock()
		c.closedBy = dropBadDeflate
		c.mu.Unlock()
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla, or wsio for a message too big once inflated, has sent
		// close 1009 already.
		c.hub.metrics.dropped.WithLabelValues(dropTooBig).Inc()
		c.mu.Lock()
		c.closedBy = dropTooBig
		c.mu.Unlock()
	case errors.As(err, &netErr) && netErr.Timeout():
		c.closeWith(websocket.CloseGoingAway, "no pong or frame for two ping intervals", dropIdle)
	}
}

// handleFrame acts on one text frame from the client.
func (c *conn) handleFrame(data []byte) {
	in, err := decodeInbound(data)
	if err != nil {
		c.sendFrame(errorMessage(ErrCodeInvalidJSON, err.Error()))
		return
	}
	text := in.chatText()
	if text == "" && !in.hasNick() {
		return
	}
	// A rename reaches every member too: it counts against the limit, or
	// renames would flood a room past it.
	if c.limit == nil {
		c.limit = newSendLimit(c.opts)
	}
	if ok, notify := c.limit.allow(time.Now()); !ok {
		c.hub.metrics.rateLimited.Inc()
		if notify {
			c.sendFrame(errorMessage(ErrCodeRateLimited, "rate limit exceeded: at most "+c.opts.rateText+
				"; messages over it are dropped, and this is said once per "+c.limit.interval.String()))
		}
		return
	}
	if in.hasNick() {
		c.handleNick(in)
	}
	if text == "" {
		return
	}
	if limit := c.hub.reg.MessageLimit(); limit > 0 && len(text) > limit {
		c.sendFrame(errorMessage(ErrCodeMessageTooBig, "message of "+strconv.Itoa(len(text))+" bytes is over "+
			strconv.Itoa(limit)+", the most another instance of this chat accepts: it was sent to nobody"))
		return
	}
	c.hub.metrics.received.Inc()
	c.hub.chat(c, text)
}

func (c *conn) handleNick(in inbound) {
	if c.opts.nickLocked {
		c.sendFrame(errorMessage(ErrCodeNickLocked, "your name is set by the server and cannot be changed"))
		return
	}
	nick, err := in.nickRequest()
	if err != nil {
		c.sendFrame(errorMessage(ErrCodeBadNick, err.Error()))
		return
	}
	c.hub.rename(c, nick)
}
