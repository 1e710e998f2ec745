package chatroom

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
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

	// A query that does not parse (a bad escape such as room=%zz) is
	// refused: Caddy's query placeholders read it as if the bad pair were
	// absent, which would put the client in the default room it did not
	// ask for.
	if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
		refuse(w, http.StatusBadRequest, fmt.Sprintf("malformed query string: %v", err))
		return nil
	}
	roomName := repl.ReplaceAll(h.Room, "")
	if roomName == "" {
		roomName = DefaultRoom
	}
	if !chat.ValidRoom(roomName) {
		refuse(w, http.StatusBadRequest, fmt.Sprintf("invalid room name %q: want 1 to 64 characters of A-Z a-z 0-9 . _ -", roomName))
		return nil
	}
	if !h.originAllowed(r) {
		refuse(w, http.StatusForbidden, fmt.Sprintf("origin %q is not allowed", r.Header.Get("Origin")))
		return nil
	}
	var member chat.Member
	if h.User != "" {
		// An empty result is no user at all: the client may choose a
		// nick, which never travels as `user`. A name the rules would
		// change is refused rather than shown as something else: two
		// users must never share one verified name.
		raw := repl.ReplaceAll(h.User, "")
		user, err := chat.VerifyUser(raw)
		if err != nil {
			// %+.40q: the reason names the input, ASCII-escaped and
			// cut, whatever the identity provider sent.
			refuse(w, http.StatusForbidden, fmt.Sprintf("the authenticated user name %+.40q cannot be a chat name: %v", raw, err))
			return nil
		}
		member.User, member.Nick = user, user
	}
	if !h.hub.roomOpen(roomName, *h.MaxRooms) {
		refuse(w, http.StatusServiceUnavailable, "too many chat rooms open; try again later")
		return nil
	}
	if !h.hub.reserve(h.MaxConnections) {
		refuse(w, http.StatusServiceUnavailable, "too many chat connections; try again later")
		return nil
	}

	opts := h.opts
	opts.nickLocked = member.User != ""
	opts.resume = parseSince(r.URL.RawQuery, time.Now())

	wc, err := h.transport.Upgrade(h.upgrader, w, r)
	if err != nil {
		// The upgrader has answered the client already.
		h.hub.release()
		h.logger.Debug("websocket upgrade failed", zap.Error(err))
		return nil
	}
	// Of the message as inflated, when the client compresses.
	wc.SetReadLimit(h.MaxMessageSize)
	c := newConn(wc, h.hub, roomName, member, opts, h.logger)
	c.via = h.ref
	// The join and the first write run here, on a stack that has grown
	// already; then the connection parks (or gets a reader goroutine) and
	// ServeHTTP returns, so that the HTTP server frees what it holds per
	// request (its buffers, the request, a deep stack): an idle member
	// costs a few KiB instead of tens. Nothing of the request may stay
	// reachable from the connection, its context included (Caddy's
	// replacer holds the ResponseWriter): the join gets a fresh context,
	// bounded in serve.
	c.serve(context.Background())
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
	if origin == "" {
		return true
	}
	if len(h.Origins) > 0 {
		return h.origins.allows(origin)
	}
	return sameOrigin(origin, r)
}

// sameOrigin reports whether origin is the request's own origin: scheme
// (https for a TLS request, http otherwise), host and port all match, so
// that a page served over plain HTTP, or under another scheme, cannot open
// the chat of its https twin. Default ports are implied on both sides.
func sameOrigin(origin string, r *http.Request) bool {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	u, err := url.Parse(origin)
	if err != nil || !strings.EqualFold(u.Scheme, scheme) || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return false
	}
	return strings.EqualFold(withPort(u.Host, scheme), withPort(r.Host, scheme))
}

// withPort returns host with the scheme's default port added when it has
// none.
func withPort(host, scheme string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	port := "80"
	if scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), port)
}
