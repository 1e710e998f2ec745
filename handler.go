package chatroom

import (
	"bufio"
	"context"
	"fmt"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// ServeHTTP implements caddyhttp.MiddlewareHandler. A WebSocket upgrade
// becomes a chat connection and is served until it ends; any other request
// goes to the next handler unchanged.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !websocket.IsWebSocketUpgrade(r) {
		return next.ServeHTTP(w, r)
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}

	roomName := repl.ReplaceAll(h.Room, "")
	if roomName == "" {
		roomName = DefaultRoom
	}
	if !validRoom(roomName) {
		refuse(w, http.StatusBadRequest, fmt.Sprintf("invalid room name %q: want 1 to 64 characters of A-Z a-z 0-9 . _ -", roomName))
		return nil
	}
	if !h.originAllowed(r) {
		refuse(w, http.StatusForbidden, fmt.Sprintf("origin %q is not allowed", r.Header.Get("Origin")))
		return nil
	}
	if !h.hub.roomOpen(roomName, *h.MaxRooms) {
		refuse(w, http.StatusServiceUnavailable, "too many chat rooms open; try again later")
		return nil
	}
	if !h.hub.reserve(h.MaxConnections) {
		refuse(w, http.StatusServiceUnavailable, "too many chat connections; try again later")
		return nil
	}

	var member chat.Member
	opts := h.opts
	if h.User != "" {
		member.Nick = chat.CleanUser(repl.ReplaceAll(h.User, ""))
		opts.nickLocked = member.Nick != ""
	}

	ws, err := h.upgrader.Upgrade(hijacker{w, &h.hub.writeBufs}, r, nil)
	if err != nil {
		// The upgrader has answered the client already.
		h.hub.release()
		h.logger.Debug("websocket upgrade failed", zap.Error(err))
		return nil
	}
	ws.SetReadLimit(h.MaxMessageSize)
	c := newConn(ws, h.hub, roomName, member, opts, h.logger)
	// The connection runs on a goroutine of its own and ServeHTTP returns,
	// so that the HTTP server frees what it holds per request (its buffers,
	// the request, a deep stack): an idle member costs a few KiB instead of
	// tens. Nothing of the request may stay reachable from the connection,
	// its context included (Caddy's replacer holds the ResponseWriter): the
	// join gets a fresh context, bounded in serve.
	go c.serve(context.Background())
	return nil
}

// newUpgrader returns the WebSocket upgrader of a handler: small read
// buffers and write buffers shared through a pool, so that an idle
// connection holds as little memory as it can.
func newUpgrader() websocket.Upgrader {
	return websocket.Upgrader{
		// 0: use the hijacker's reader (readBufferSize) rather than make one.
		ReadBufferSize:  0,
		WriteBufferPool: new(sync.Pool),
		// The handler checks origins itself, before the upgrade.
		CheckOrigin: func(*http.Request) bool { return true },
	}
}

// refuse answers a request that cannot become a chat connection with a
// plain-text reason.
func refuse(w http.ResponseWriter, status int, reason string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, reason)
}

// originAllowed applies the `origins` setting: without it only the request's
// own host may open a connection from a browser. Clients that send no Origin
// (non-browser clients) are allowed either way.
func (h *Handler) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || h.anyOrig {
		return true
	}
	if len(h.origins) > 0 {
		return h.origins[strings.ToLower(origin)]
	}
	return sameOrigin(origin, r.Host)
}

// sameOrigin reports whether origin names host, as gorilla's default check
// does.
func sameOrigin(origin, host string) bool {
	_, rest, ok := strings.Cut(origin, "://")
	if !ok {
		return false
	}
	return strings.EqualFold(rest, host)
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
	if brw.Reader.Buffered() == 0 {
		// gorilla reads through this reader (it reuses a hijacked reader
		// of more than 256 bytes when ReadBufferSize is 0), so that the
		// connection can see what gorilla has buffered before it parks.
		bc.br = bufio.NewReaderSize(bc, readBufferSize)
		brw = bufio.NewReadWriter(bc.br, brw.Writer)
	}
	return bc, brw, nil
}

// readBufferSize is a connection's read buffer: room for a chat message or
// two; larger frames are read through it in pieces. gorilla reuses the
// hijacked reader only when it holds more than 256 bytes.
const readBufferSize = 512
