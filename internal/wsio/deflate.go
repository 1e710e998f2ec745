package wsio

import (
	"bytes"
	"compress/flate"
	"sync"
)

// deflateTail is what a sync flush ends with, and what RFC 7692 §7.2.1 has
// the sender strip from a compressed message (the receiver puts it back).
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// deflateLevel is the compression level of outgoing frames: flate's
// fastest, as gorilla uses. Chat frames are short, so a slower level finds
// little more to take out, and every broadcast pays the compressor's time
// before the first member gets the frame.
const deflateLevel = flate.BestSpeed

// maxIdleDeflaters is how many compressors a Transport keeps between
// uses. A flate.Writer holds about 1 MiB of tables, so none belongs to a
// connection; compressions run on the writers of the connections that
// negotiated compression, once per frame, so a few cover a busy room.
// More are made when more run at once, and dropped after.
const maxIdleDeflaters = 4

// deflaterPool is a Transport's compressors. It is a free list rather than
// a sync.Pool: a sync.Pool is emptied by the garbage collector, and a busy
// room would then allocate a fresh megabyte on the next broadcast after
// every collection.
type deflaterPool struct {
	mu   sync.Mutex
	free []*deflater
}

// deflater is one compressor and the buffer it writes to.
type deflater struct {
	fw  *flate.Writer
	out bytes.Buffer
}

func (p *deflaterPool) get() *deflater {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		d := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return d
	}
	p.mu.Unlock()
	d := new(deflater)
	// NewWriter fails only on a bad level.
	d.fw, _ = flate.NewWriter(&d.out, deflateLevel)
	return d
}

func (p *deflaterPool) put(d *deflater) {
	if d.out.Cap() > maxBatchBytes {
		d.out = bytes.Buffer{} // a rare huge frame's buffer is not kept
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) < maxIdleDeflaters {
		p.free = append(p.free, d)
	}
}

// deflateFrame returns payload compressed as one message with no context
// (RFC 7692 §7.2.1), framed as a final text frame with RSV1 set; or nil
// when compressing does not make the frame shorter.
func (p *deflaterPool) deflateFrame(payload []byte) []byte {
	d := p.get()
	defer p.put(d)
	d.out.Reset()
	d.fw.Reset(&d.out)
	// Writes to a bytes.Buffer do not fail.
	_, _ = d.fw.Write(payload)
	_ = d.fw.Flush()
	body := d.out.Bytes()
	if !bytes.HasSuffix(body, deflateTail) {
		return nil // not what a sync flush makes: send it plain
	}
	body = body[:len(body)-len(deflateTail)]
	if len(body) >= len(payload) {
		return nil
	}
	return appendFrame(make([]byte, 0, maxFrameHeader+len(body)), finBit|rsv1Bit|opText, body)
}
