package chatroom

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// joinTimeout bounds the registry calls made while a connection joins.
const joinTimeout = 5 * time.Second

// connOptions are the per-connection settings of the handler that accepted
// the connection. A reload changes them for new connections only.
type connOptions struct {
	history      int
	sendQueue    int
	pingInterval time.Duration
	rateLimit    rate.Limit
	rateBurst    int
	rateInterval time.Duration // rate_limit's interval
	rateText     string        // "20 per 1s", for the error frame
	nickLocked   bool
	resume       resumeRequest // what the client asked for with since

	// presenceLimit is the presence_limit of the handler, which a room
	// takes from the connection that opens it.
	presenceLimit int
}

// conn is one chat member: a WebSocket connection in a room.
//
// It has no goroutine while idle: the handler's ServeHTTP returns once the
// member has joined and been sent its first frames (so that the HTTP
// server's request state is freed), a reader runs only while the client
// sends (see conn_read.go), a writer only while frames are queued, and the
// pings come from a timer. An idle member costs this struct, gorilla's,
// and a small read buffer.
type conn struct {
	wc       wsio.Conn       // the transport: writes, close, parking; never copied
	ws       *websocket.Conn // wc's gorilla connection, for the read deadline and the pong handler
	hub      *hub
	opts     connOptions
	limit    *sendLimit // made on the first frame: most members only read
	roomName string
	logger   *zap.Logger // the handler's, shared: see debug
	via      *handlerRef // the handler it came through (reload.go)

	// Guarded by room.mu.
	room   *room
	index  int // position in room.members; -1 once left
	member chat.Member

	mu        sync.Mutex
	queue     []*wsio.Frame
	presence  waitingPresence // presence frames in queue (conn_write.go)
	spare     []*wsio.Frame   // the writer's last batch, reused
	writing   bool            // a writer runs, or is held for serve (newConn)
	pingDue   bool
	closing   bool // no more frames are queued
	pingTimer *time.Timer
	closedBy  string // the drop reason when the server closed it, for the log
	parked    bool   // no reader runs; the poller starts one on input
	tornDown  bool   // left the room; nothing more to do

	replay *replayFeed // a replay whose mark is in queue (resume.go); guarded by mu

	// The read side (conn_read.go).
	lastHeard atomic.Int64 // Unix ns of the last frame or pong from the client

	// writeLoopFn is c.writeLoop, bound once: `go c.writeLoop()` would
	// allocate a closure every time a writer starts.
	writeLoopFn func()
	readBurstFn func()
}

func newConn(wc wsio.Conn, h *hub, roomName string, member chat.Member, opts connOptions, logger *zap.Logger) *conn {
	c := &conn{
		wc:       wc,
		ws:       wc.WS(),
		hub:      h,
		opts:     opts,
		roomName: roomName,
		member:   member,
		index:    -1,
		logger:   logger,
		// The writer is held for serve, which writes what the join queues
		// on the goroutine that upgraded the connection: no writer
		// goroutine is started (and no fresh stack grown) for a joiner's
		// first frames, which go out with the handshake response.
		writing: true,
	}
	c.writeLoopFn = c.writeLoop
	c.readBurstFn = c.readBurst
	return c
}

// identify gives c its id. It runs before c is in a room, where other
// goroutines may read it; it never changes after.
func (c *conn) identify(id string) { c.member.ID = id }

// debug logs msg about c at debug level with its id and room. The fields
// are made per message rather than kept in a logger of c's own, which
// would cost every idle member a few hundred bytes.
func (c *conn) debug(msg string, fields ...zap.Field) {
	if ce := c.logger.Check(zap.DebugLevel, msg); ce != nil {
		ce.Write(append(fields, zap.String("id", c.member.ID), zap.String("room", c.roomName))...)
	}
}

// placeAt records that c joined r at index i of its members. The caller
// holds r.mu. c.room is set once, here: it is read without a lock after.
func (c *conn) placeAt(r *room, i int) { c.room, c.index = r, i }

// moveTo records c's new index in its room's members; -1 once it left. The
// caller holds c.room.mu.
func (c *conn) moveTo(i int) { c.index = i }

// setNick changes c's display name. The caller holds c.room.mu.
func (c *conn) setNick(nick string) { c.member.Nick = nick }

// serve joins the connection to its room, writes the joiner's first
// frames and parks the connection, or hands it to a reader goroutine when
// the client has sent something already. It runs on the goroutine that
// upgraded the connection. ctx bounds the registry calls made while
// joining and is not kept after.
func (c *conn) serve(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	err := c.hub.join(ctx, c)
	cancel()
	if errors.Is(err, errReplaysBusy) {
		c.closeWith(websocket.CloseTryAgainLater, err.Error(), dropReplaysBusy)
		c.teardown()
		return
	}
	if err != nil {
		c.closeWith(websocket.CloseGoingAway, err.Error(), dropShutdown)
		c.teardown()
		return
	}
	c.debug("connection opened")
	c.heard()
	c.ws.SetPongHandler(func(string) error {
		c.heard()
		return c.ws.SetReadDeadline(time.Now().Add(2 * c.opts.pingInterval))
	})
	c.startPinging()
	if c.hasReplay() {
		// A replay may take up to WriteWait a chunk: it is written by a
		// goroutine of its own, so that the request is let go now.
		go c.writeLoopFn()
	} else {
		c.writeLoop() // the joiner's first frames (newConn)
	}
	c.wc.Watch(c)
	if !c.parkIfIdle() {
		// The client has sent something already: a reader of its own, so
		// that the handler's goroutine, and the request, are let go.
		go c.readBurstFn()
	}
}

// teardown ends the connection once it is over: the member leaves the
// room and the socket is closed. It runs once, on the reader, or on the
// goroutine that closed a parked connection.
func (c *conn) teardown() {
	c.mu.Lock()
	if c.tornDown {
		c.mu.Unlock()
		return
	}
	c.tornDown = true
	c.parked = false
	c.mu.Unlock()
	c.stopPinging()
	c.dropReplay()
	c.wc.Unwatch()
	c.hub.leave(c)
	_ = c.wc.Close()
	c.hub.release()
	c.mu.Lock()
	reason := c.closedBy
	c.mu.Unlock()
	if reason == "" {
		reason = "client"
	}
	c.debug("connection closed", zap.String("reason", reason))
}

// closeWith sends a close frame with code and reason, counts the reason and
// closes the connection; the reader then leaves the room. Only the first
// call acts.
func (c *conn) closeWith(code int, text, reason string) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	c.mu.Unlock()
	c.finishClose(code, text, reason)
}

// finishClose does the work of closeWith once c.closing is set.
func (c *conn) finishClose(code int, text, reason string) {
	c.hub.metrics.dropped.WithLabelValues(reason).Inc()
	// Logged once, with the others, when the reader ends.
	c.mu.Lock()
	c.closedBy = reason
	c.mu.Unlock()
	c.wc.CloseWith(code, text)
	// A parked connection has no reader to notice the close.
	c.mu.Lock()
	parked := c.parked
	c.parked = false
	c.mu.Unlock()
	if parked {
		c.teardown()
	}
}
