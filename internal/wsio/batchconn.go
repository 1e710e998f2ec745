package wsio

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// maxBatchBytes bounds what one batch gathers before it is written out, so
// that a connection with a long queue borrows a bounded buffer.
const maxBatchBytes = 64 << 10

// batchConn is the net.Conn a chat connection's WebSocket runs on. Outside
// a batch, writes go straight to the socket. Between begin and flush they
// are gathered in a buffer borrowed from a pool shared by every connection
// and go out in one system call: a writer with several frames queued sends
// them together, and an idle connection holds no write buffer at all.
//
// Control frames that gorilla writes from other goroutines (pongs, close)
// while a batch is open join the batch, in the order written. Every Write
// call carries whole frames, so the stream stays well formed.
type batchConn struct {
	net.Conn
	pool *bufPool
	raw  syscall.RawConn // nil when Conn is not a socket
	br   *bufio.Reader   // the reader gorilla reads through; see hijacker

	mu       sync.Mutex
	buf      *[]byte   // non-nil between begin and flush
	deadline time.Time // of the open batch
	closed   bool
	// framed is set once the handshake response is written: from then on
	// every Write is gorilla's, and carries one whole control frame.
	framed bool
	// closeSent is set once a close frame is written: no data frame may
	// follow it (RFC 6455 §5.5.1).
	closeSent bool
	// socketDeadline is the write deadline the socket has. A flush moves
	// it only when it falls short of the batch's by more than deadlineSlack,
	// so that a busy connection does not update a runtime timer per batch.
	socketDeadline time.Time
}

// deadlineSlack is how much earlier than asked a batch's write may time
// out: WriteWait minus this still bounds a client that stopped reading.
const deadlineSlack = WriteWait / 2

func newBatchConn(c net.Conn, pool *bufPool) *batchConn {
	b := &batchConn{Conn: c, pool: pool}
	if sc, ok := c.(syscall.Conn); ok {
		b.raw, _ = sc.SyscallConn()
	}
	return b
}

// rawConn gives the socket, for the poller.
func (b *batchConn) rawConn() (syscall.RawConn, error) {
	if b.raw == nil {
		return nil, errors.New("connection is not a socket")
	}
	return b.raw, nil
}

// begin opens a batch whose writes must be done by deadline.
func (b *batchConn) begin(deadline time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf == nil {
		b.buf = b.pool.get()
	}
	b.deadline = deadline
}

// flush writes out the batch and closes it.
func (b *batchConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf == nil {
		return nil
	}
	err := b.flushLocked()
	b.pool.put(b.buf)
	b.buf = nil
	return err
}

func (b *batchConn) flushLocked() error {
	if len(*b.buf) == 0 {
		return nil
	}
	if b.closed {
		return net.ErrClosed
	}
	var err error
	if b.socketDeadline.IsZero() || b.deadline.Sub(b.socketDeadline) > deadlineSlack || b.deadline.Before(b.socketDeadline) {
		err = b.setDeadlineLocked(b.deadline)
	}
	if err == nil {
		_, err = b.Conn.Write(*b.buf)
	}
	*b.buf = (*b.buf)[:0]
	return err
}

// Write implements net.Conn. gorilla writes through it: the handshake
// response, then control frames (ping, pong, close), one whole frame a call.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.writeLocked(p)
	if err == nil && b.framed && len(p) > 0 && p[0]&0x0f == opClose {
		b.closeSent = true
	}
	return n, err
}

// upgraded notes that the handshake response has been written.
func (b *batchConn) upgraded() {
	b.mu.Lock()
	b.framed = true
	b.mu.Unlock()
}

// writeFrame writes a data frame: into the open batch, or else straight to
// the socket. It is refused with websocket.ErrCloseSent once a close frame
// has gone out, as gorilla refuses its own writes then.
func (b *batchConn) writeFrame(wire []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closeSent {
		return websocket.ErrCloseSent
	}
	_, err := b.writeLocked(wire)
	return err
}

func (b *batchConn) writeLocked(p []byte) (int, error) {
	if b.closed {
		return 0, net.ErrClosed
	}
	if b.buf == nil {
		return b.Conn.Write(p)
	}
	if len(*b.buf)+len(p) > maxBatchBytes {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > maxBatchBytes {
			return b.Conn.Write(p)
		}
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

// SetWriteDeadline implements net.Conn. Within a batch the batch's deadline
// governs: gorilla sets one before every frame, which would cost a timer
// update per frame for a write that has not happened yet.
func (b *batchConn) SetWriteDeadline(t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf != nil {
		return nil
	}
	return b.setDeadlineLocked(t)
}

func (b *batchConn) setDeadlineLocked(t time.Time) error {
	b.socketDeadline = t
	return b.Conn.SetWriteDeadline(t)
}

// Close implements net.Conn. What an open batch holds (typically a close
// frame written while the writer was busy) goes out first, within
// CloseWait.
func (b *batchConn) Close() error {
	// A flush blocked on a client that does not read holds b.mu until its
	// deadline, up to WriteWait away: pull the socket's deadline in, so that
	// closing a slow consumer takes at most CloseWait, and what is pending
	// (a close frame) still goes out to a client that reads.
	_ = b.Conn.SetWriteDeadline(time.Now().Add(CloseWait))
	b.mu.Lock()
	if !b.closed && b.buf != nil {
		if limit := time.Now().Add(CloseWait); limit.Before(b.deadline) {
			b.deadline = limit
		}
		_ = b.flushLocked()
	}
	b.closed = true
	b.mu.Unlock()
	return b.Conn.Close()
}
