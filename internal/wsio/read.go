package wsio

import (
	"compress/flate"
	"errors"
	"io"
	"time"

	"github.com/gorilla/websocket"
)

// ErrBadDeflate is returned by ReadMessage for a compressed message that
// does not inflate, or that has data after its final deflate block; the
// client has been sent close 1007.
var ErrBadDeflate = errors.New("websocket: compressed message does not inflate")

// SetReadLimit sets the largest message ReadMessage takes, in bytes once
// inflated. gorilla counts the bytes on the wire: on a connection that
// negotiated compression it is given room for what deflate adds to a
// message that does not compress, and the inflated size is checked here.
func (c *Conn) SetReadLimit(limit int64) {
	c.limit = limit
	wire := limit
	if c.Deflates() {
		wire = deflatedBound(limit)
	}
	c.ws.SetReadLimit(wire)
}

// deflatedBound is the most that a message of n bytes takes once deflated
// when it does not compress: stored blocks of up to 65,535 bytes with 5
// bytes of header each, and a little for an encoder that tries a Huffman
// block first.
func deflatedBound(n int64) int64 { return n + 5*(n/65535+1) + 64 }

// ReadMessage reads the next data message, inflated when the client
// compressed it. A message longer than the limit (SetReadLimit) gets close
// 1009 and websocket.ErrReadLimit as soon as it passes the limit: a
// deflate bomb is inflated no further than that. Other errors are
// gorilla's, or ErrBadDeflate.
func (c *Conn) ReadMessage() (kind int, data []byte, err error) {
	kind, r, err := c.ws.NextReader()
	if err != nil {
		return 0, nil, err
	}
	limit := c.limit
	if limit <= 0 {
		limit = 1<<63 - 2
	}
	data, err = io.ReadAll(io.LimitReader(r, limit+1))
	var corrupt flate.CorruptInputError
	switch {
	case errors.As(err, &corrupt):
		c.closeForRead(websocket.CloseInvalidFramePayloadData, "compressed message does not inflate")
		return 0, nil, ErrBadDeflate
	case err != nil:
		return 0, nil, err
	case int64(len(data)) > limit:
		c.closeForRead(websocket.CloseMessageTooBig, "")
		return 0, nil, websocket.ErrReadLimit
	case !messageDone(c.ws):
		// The deflate stream ended (a block marked final) before the
		// message did: what is left of it must not be taken for the next
		// frame, by ReadControl above all.
		c.closeForRead(websocket.CloseInvalidFramePayloadData, "data after the final deflate block")
		return 0, nil, ErrBadDeflate
	}
	return kind, data, nil
}

// closeForRead sends the close frame for a message the reader refuses, as
// gorilla does for the ones it refuses: the caller ends the connection.
func (c *Conn) closeForRead(code int, text string) {
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(CloseWait))
}
