package wsio

import (
	"errors"
	"time"

	"github.com/gorilla/websocket"
)

// ReadControl consumes a whole ping or pong frame at the head of the read
// buffer, between messages, answering a ping, and reports whether it did:
// then the client was heard from. gorilla's ReadMessage would handle it too,
// but then wait for a data frame, and a reader woken by a pong could not
// park again. Anything else (a data frame, a partial or malformed control
// frame) is left to gorilla, which reports it.
func (c *Conn) ReadControl() bool {
	if c.br == nil {
		return false
	}
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
	if op == websocket.PingMessage {
		var payload [125]byte
		mask := frame[2:6]
		for i, b := range frame[6:] {
			payload[i] = b ^ mask[i&3]
		}
		err := c.ws.WriteControl(websocket.PongMessage, payload[:n], time.Now().Add(CloseWait))
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
