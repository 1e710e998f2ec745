package chatroom

import (
	"bufio"
	"context"
	"fmt"
	"net"
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
	defer h.hub.release()

	var member Member
	opts := h.opts
	if h.User != "" {
		member.Nick = cleanUser(repl.ReplaceAll(h.User, ""))
		opts.nickLocked = member.Nick != ""
	}

	ws, err := h.upgrader.Upgrade(hijacker{w}, r, nil)
	if err != nil {
		// The upgrader has answered the client already.
		h.logger.Debug("websocket upgrade failed", zap.Error(err))
		return nil
	}
	ws.SetReadLimit(h.MaxMessageSize)
	c := newConn(ws, h.hub, roomName, member, opts, h.logger)
	// The request's context ends when ServeHTTP returns; the connection
	// needs only a bound on the registry calls made while it joins.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), joinTimeout)
	defer cancel()
	c.serve(ctx)
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

// hijacker gives gorilla the http.Hijacker it asserts: since Caddy v2.11.5
// the ResponseWriter a handler gets only unwraps to one.
type hijacker struct{ http.ResponseWriter }

// Hijack implements http.Hijacker.
func (w hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}
