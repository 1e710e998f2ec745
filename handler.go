package chatroom

import (
	"context"
	"fmt"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"net/http"
	"strings"

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

	wc, err := h.transport.Upgrade(&h.upgrader, w, r)
	if err != nil {
		// The upgrader has answered the client already.
		h.hub.release()
		h.logger.Debug("websocket upgrade failed", zap.Error(err))
		return nil
	}
	wc.WS().SetReadLimit(h.MaxMessageSize)
	c := newConn(wc, h.hub, roomName, member, opts, h.logger)
	// The connection runs on a goroutine of its own and ServeHTTP returns,
	// so that the HTTP server frees what it holds per request (its buffers,
	// the request, a deep stack): an idle member costs a few KiB instead of
	// tens. Nothing of the request may stay reachable from the connection,
	// its context included (Caddy's replacer holds the ResponseWriter): the
	// join gets a fresh context, bounded in serve.
	go c.serve(context.Background())
	return nil
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
