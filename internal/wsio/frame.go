package wsio

import "encoding/binary"

// Frame is one text message encoded once as a WebSocket frame from a
// server (RFC 6455 §5.2: final, unmasked, no extension), ready to be
// written to any number of connections. It is immutable once made.
//
// gorilla's PreparedMessage does the same job, but it builds each frame by
// writing through a throwaway gorilla Conn (an allocation of several
// hundred bytes and a deep call stack), which a frame for one member alone,
// such as a joiner's welcome, pays in full. A server frame needs no mask
// and, without compression, is a header and the payload, so this encodes it
// directly.
type Frame struct {
	wire []byte // header, then payload
	off  int    // where the payload starts
}

// maxFrameHeader is the longest header of a server frame: 2 bytes and a
// 64-bit length.
const maxFrameHeader = 10

// opText and opClose are the frame opcodes this package writes or watches.
const (
	opText  = 0x1
	opClose = 0x8
)

// NewTextFrame encodes payload as a text frame. payload must be valid
// UTF-8; the caller encodes it.
func NewTextFrame(payload []byte) *Frame {
	wire := make([]byte, 0, maxFrameHeader+len(payload))
	wire = append(wire, 0x80|opText) // FIN, text
	switch n := len(payload); {
	case n <= 125:
		wire = append(wire, byte(n))
	case n <= 0xffff:
		wire = append(wire, 126)
		wire = binary.BigEndian.AppendUint16(wire, uint16(n))
	default:
		wire = append(wire, 127)
		wire = binary.BigEndian.AppendUint64(wire, uint64(n))
	}
	off := len(wire)
	return &Frame{wire: append(wire, payload...), off: off}
}

// Len is the frame's size on the wire, header included.
func (f *Frame) Len() int { return len(f.wire) }

// Payload is the message the frame carries.
func (f *Frame) Payload() []byte { return f.wire[f.off:] }
