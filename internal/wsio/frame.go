package wsio

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// Frame is one text message encoded once as a WebSocket frame from a
// server (RFC 6455 §5.2: final, unmasked), ready to be written to any
// number of connections.
//
// gorilla's PreparedMessage does the same job, but it builds each frame by
// writing through a throwaway gorilla Conn (an allocation of several
// hundred bytes and a deep call stack), which a frame for one member alone,
// such as a joiner's welcome, pays in full. A server frame needs no mask
// and, without compression, is a header and the payload, so this encodes it
// directly.
//
// Its compressed form (permessage-deflate) is made when the first
// connection that negotiated compression writes it, and then shared by
// every other such connection: a broadcast is compressed once, and never
// when no member wants it. Apart from that the Frame is immutable.
type Frame struct {
	wire []byte // header, then payload
	off  int    // where the payload starts

	mu sync.Mutex             // held while the compressed form is made
	z  atomic.Pointer[[]byte] // the compressed wire, or wire itself when compressing does not pay; nil until made
}

// maxFrameHeader is the longest header of a server frame: 2 bytes and a
// 64-bit length.
const maxFrameHeader = 10

// The bits of a frame's first byte that this package writes or watches.
const (
	finBit  = 0x80
	rsv1Bit = 0x40 // set on a compressed message (RFC 7692 §6)
	opText  = 0x1
	opClose = 0x8
)

// NewTextFrame encodes payload as a text frame. payload must be valid
// UTF-8; the caller encodes it.
func NewTextFrame(payload []byte) *Frame {
	wire := appendFrame(make([]byte, 0, maxFrameHeader+len(payload)), finBit|opText, payload)
	return &Frame{wire: wire, off: len(wire) - len(payload)}
}

// appendFrame appends a server frame (unmasked) of first byte b0 and
// payload to wire.
func appendFrame(wire []byte, b0 byte, payload []byte) []byte {
	wire = append(wire, b0)
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
	return append(wire, payload...)
}

// Len is the frame's size on the wire, header included.
func (f *Frame) Len() int { return len(f.wire) }

// Payload is the message the frame carries.
func (f *Frame) Payload() []byte { return f.wire[f.off:] }

// compressed returns the frame as a connection that negotiated compression
// gets it: compressed with p the first time, the same bytes after, or the
// plain frame when compressing does not make it shorter. Writers of other
// connections wait for the first one rather than compress it again.
func (f *Frame) compressed(p *deflaterPool) []byte {
	if z := f.z.Load(); z != nil {
		return *z
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if z := f.z.Load(); z != nil {
		return *z
	}
	wire := p.deflateFrame(f.Payload())
	if wire == nil {
		wire = f.wire
	}
	f.z.Store(&wire)
	return wire
}
