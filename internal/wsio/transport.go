package wsio

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// WriteWait bounds one batch of writes to a client; a client that does not
// take a frame within it is gone.
const WriteWait = 10 * time.Second

// CloseWait bounds the write of a close frame or of a pong.
const CloseWait = time.Second

// readBufferSize is a connection's read buffer, which every member holds,
// idle or not: the smallest that gorilla takes over (it reuses the hijacked
// reader only when it holds more than 256 bytes), rounded up to the
// allocator's next size class. A short chat message and any ping or pong
// fit; a larger frame is read in pieces, and one larger than the buffer
// mostly straight into gorilla's message (bufio skips its buffer then).
const readBufferSize = 288

// Transport is what a set of connections shares: the batch buffers, the
// compressors and the poller that parked connections wait on. It outlives
// config reloads with the hub it serves.
type Transport struct {
	logger *zap.Logger
	bufs   bufPool
	zs     deflaterPool // the compressors of frames to connections that negotiated it

	pollOnce sync.Once
	poll     *poller // nil where unavailable, or once stopped
}

// NewTransport returns a transport; its poller starts on first use.
func NewTransport(logger *zap.Logger) *Transport {
	return &Transport{logger: logger}
}

// Upgrader upgrades requests to Conns of a Transport, with or without
// permessage-deflate. It is safe for concurrent use and holds no state of
// its own once made.
type Upgrader struct {
	plain, deflate websocket.Upgrader
	compression    Compression
}

// NewUpgrader returns the upgrader to use with Upgrade: it reads through the
// hijacked reader and shares write buffers through a pool, so that an idle
// connection holds as little memory as it can, and negotiates compression
// as c says. It accepts any origin: the caller checks origins before the
// upgrade.
func NewUpgrader(c Compression) *Upgrader {
	plain := websocket.Upgrader{
		// 0: use the hijacker's reader (readBufferSize) rather than make one.
		ReadBufferSize:  0,
		WriteBufferPool: new(sync.Pool),
		CheckOrigin:     func(*http.Request) bool { return true },
	}
	if c.MinSize < 1 {
		c.MinSize = 1
	}
	u := &Upgrader{plain: plain, compression: c}
	if c.Enabled {
		// gorilla negotiates, writes the response and inflates what the
		// client compressed; the frames it writes are control frames,
		// never compressed. It only compresses through its own writers,
		// which are not used.
		u.deflate = plain
		u.deflate.EnableCompression = true
	}
	return u
}

// Upgrade upgrades the request to a WebSocket connection on a batchConn. On
// an error the upgrader has answered the client already.
//
// The handshake response is held back until the Conn's first WriteFrames,
// CloseWith or Close, so that it goes out in one system call with the first
// frames: the caller must do one of them, and soon. The Conn is
// returned by value so that its owner can hold it inside its own struct (one
// allocation less per idle connection); it must not be copied once used.
func (t *Transport) Upgrade(u *Upgrader, w http.ResponseWriter, r *http.Request) (Conn, error) {
	gu := &u.plain
	if u.compression.Enabled && acceptsDeflate(r.Header) {
		gu = &u.deflate
	}
	ws, err := gu.Upgrade(hijacker{w, &t.bufs}, r, nil)
	if err != nil {
		return Conn{}, fmt.Errorf("websocket upgrade: %w", err)
	}
	out, ok := ws.NetConn().(*batchConn)
	if !ok {
		// Data frames go straight into the batchConn, so a gorilla that
		// wrapped the hijacked connection would be bypassed: refuse
		// rather than interleave (every test of this package fails).
		_ = ws.Close()
		return Conn{}, errors.New("websocket upgrade: gorilla does not run on the hijacked connection")
	}
	c := newConn(ws, out, t)
	// What gorilla answered decides, not what was asked: a client gets
	// compressed frames only when the response said it may.
	if gu == &u.deflate && negotiatedDeflate(ws) {
		c.deflateMin = u.compression.MinSize
	}
	return c, nil
}

// Deflates reports whether the connection negotiated permessage-deflate.
func (c *Conn) Deflates() bool { return c.deflateMin > 0 }

// poller returns the poller that parked connections wait on, starting it on
// first use; nil when the system has none (connections then keep a reader
// goroutine).
func (t *Transport) poller() *poller {
	t.pollOnce.Do(func() {
		p, err := newPoller()
		if err != nil {
			t.logger.Debug("no poller for idle connections", zap.Error(err))
			return
		}
		t.poll = p
	})
	return t.poll
}

// Close stops the poller once the connections are closed: a parked
// connection is torn down by whoever closes it, not by the poller.
func (t *Transport) Close() {
	t.pollOnce.Do(func() {}) // no poller may start after this
	if t.poll != nil {
		t.poll.stop()
	}
}

// hijacker gives gorilla the http.Hijacker it asserts: since Caddy v2.11.5
// the ResponseWriter a handler gets only unwraps to one. It also hands
// gorilla a batchConn, so that a connection's writer can send several
// queued frames in one system call.
type hijacker struct {
	http.ResponseWriter
	bufs *bufPool
}

// Hijack implements http.Hijacker.
func (w hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	bc := newBatchConn(nc, w.bufs)
	// The handshake response waits for the first frames (see Upgrade).
	bc.begin(time.Now().Add(WriteWait))
	if brw.Reader.Buffered() == 0 {
		// gorilla reads through this reader (it reuses a hijacked reader
		// of more than 256 bytes when ReadBufferSize is 0), so that the
		// connection can see what gorilla has buffered before it parks.
		bc.br = bufio.NewReaderSize(bc, readBufferSize)
		brw = bufio.NewReadWriter(bc.br, brw.Writer)
	}
	return bc, brw, nil
}
