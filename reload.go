package chatroom

import (
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/gorilla/websocket"
)

// A hub outlives reloads and may serve several handlers. A handler's
// clients stay open across a reload when the new config has the same
// handler (at the same location, see handlerLocation) on the same hub. A
// handler whose registry settings changed is on another hub in the new
// config: it closes its own clients with 1001, even while another handler
// keeps the old hub alive, so that they reconnect into the new registry and
// no room is silently split between the two.

// errHandlerGone refuses a connection whose handler left the config while
// it was joining.
var errHandlerGone = errors.New("chat settings changed; reconnect")

// handlerRef stands for one provisioned handler in its hub; each connection
// points at the one it came through.
type handlerRef struct {
	seq uint64 // order of provisioning within the hub
	// locate finds the handler's location once its config is whole. It
	// holds that config (the handler and the modules around it): detach
	// drops it, so that a connection from before a reload, which keeps its
	// ref, does not keep the old config too.
	locate func() string

	located  bool // guarded by the hub's handlerSet.mu
	location string

	// next is the handler of a newer config with the same settings that
	// took this one's connections over; gone is set when none did.
	next atomic.Pointer[handlerRef]
	gone atomic.Bool
}

// current follows the takeovers to the handler that now holds the
// connections of r. Each takeover moves the members' refs on to the new
// handler (moveVia), so that the chain is one or two links long, not one
// per reload: only a connection that joined during a takeover is behind,
// and the next takeover moves it.
func (r *handlerRef) current() *handlerRef {
	for {
		n := r.next.Load()
		if n == nil {
			return r
		}
		r = n
	}
}

// handlerSet is the list of handlers that use a hub.
type handlerSet struct {
	mu   sync.Mutex
	list []*handlerRef
	seq  uint64
}

// attach records a handler as a user of h; locate tells where it is in its
// config, once the config is provisioned.
func (h *hub) attach(locate func() string) *handlerRef {
	s := &h.handlers
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	ref := &handlerRef{locate: locate, seq: s.seq}
	s.list = append(s.list, ref)
	return ref
}

// detach removes a handler that is being cleaned up. Caddy provisions a
// new config before it cleans up the old one, so the same handler of the
// new config is attached already when there is one: the connections pass
// to it. Otherwise they are closed with 1001, unless no handler uses the hub
// any more: then the hub itself shuts down and closes them all.
func (h *hub) detach(ref *handlerRef) {
	s := &h.handlers
	s.mu.Lock()
	var successor *handlerRef
	for i := 0; i < len(s.list); i++ {
		other := s.list[i]
		if other == ref {
			s.list = append(s.list[:i], s.list[i+1:]...)
			i--
			continue
		}
		if other.seq > ref.seq && successor == nil && s.locationOf(other) == s.locationOf(ref) {
			successor = other
		}
	}
	last := len(s.list) == 0
	ref.locate = nil // the old config may go; its location is known if needed
	s.mu.Unlock()
	switch {
	case successor != nil:
		ref.next.Store(successor)
		h.moveVia(successor)
	case !last:
		ref.gone.Store(true)
		h.closeVia(ref)
	}
}

// locationOf returns the location of r, found once. The caller holds s.mu.
func (s *handlerSet) locationOf(r *handlerRef) string {
	if !r.located {
		r.location, r.located = r.locate(), true
	}
	return r.location
}

// members calls each for every member of every room of h, with the
// member's room locked.
func (h *hub) members(each func(*conn)) {
	h.mu.Lock()
	rooms := make([]*room, 0, len(h.rooms))
	for _, r := range h.rooms {
		rooms = append(rooms, r)
	}
	h.mu.Unlock()
	for _, r := range rooms {
		r.mu.Lock()
		for _, c := range r.members {
			each(c)
		}
		r.mu.Unlock()
	}
}

// moveVia points every member whose handler was taken over by successor
// at successor itself. Without it each connection would keep the ref it
// came through, and with it the chain of every handler since, one per
// reload, for as long as it stays. A member's via is read and written
// under its room's lock.
func (h *hub) moveVia(successor *handlerRef) {
	h.members(func(c *conn) {
		if c.via != nil && c.via != successor && c.via.current() == successor {
			c.via = successor
		}
	})
}

// closeVia closes, with 1001, every connection that came through ref. A
// connection joining at the same time sees ref gone (see refusedVia).
func (h *hub) closeVia(ref *handlerRef) {
	var conns []*conn
	h.members(func(c *conn) {
		if c.via != nil && c.via.current() == ref {
			conns = append(conns, c)
		}
	})
	for _, c := range conns {
		go c.closeWith(websocket.CloseGoingAway, errHandlerGone.Error(), dropReload)
	}
}

// refusedVia reports whether c came through a handler that has left the
// config. The caller holds the lock of the room c joins, which closeVia
// takes after marking the handler gone: c is either refused here or found
// there.
func refusedVia(c *conn) bool {
	return c.via != nil && c.via.current().gone.Load()
}

// A handler has no name in Caddy's config. What tells one chatroom handler
// from another across a reload is where it sits: the server it is in and
// the matchers of every route that leads to it (e.g. `path /ws` in a site
// block for `chat.example`). Route positions are left out, so that adding
// an unrelated directive, which shifts them, does not make a handler
// another one.

// handlerLocation returns the location of handler, given the modules that
// contain it (its caddy.Context's Modules(), outermost first). It walks the
// config, so it must be called once that config is fully provisioned and
// until it is cleaned up. A handler it cannot place is at "".
func handlerLocation(parents []caddy.Module, handler caddy.Module) string {
	var b strings.Builder
	for i, parent := range parents {
		child := handler
		if i+1 < len(parents) {
			child = parents[i+1]
		}
		for label, routes := range routeLists(parent) {
			if match, ok := routeMatching(routes, child); ok {
				b.WriteString(label)
				b.WriteString(match)
				b.WriteByte('/')
				break
			}
		}
	}
	return b.String()
}

// routeLists returns the route lists of a module that holds routes, by a
// label that names where they are.
func routeLists(m caddy.Module) map[string]caddyhttp.RouteList {
	out := make(map[string]caddyhttp.RouteList)
	switch m := m.(type) {
	case *caddyhttp.App:
		for name, srv := range m.Servers {
			out["server "+name+" "+strings.Join(srv.Listen, ",")] = srv.Routes
			if srv.Errors != nil {
				out["errors of server "+name] = srv.Errors.Routes
			}
		}
	case *caddyhttp.Subroute:
		out["subroute"] = m.Routes
		if m.Errors != nil {
			out["errors of subroute"] = m.Errors.Routes
		}
	}
	return out
}

// routeMatching finds the route that holds child and returns its matchers.
func routeMatching(routes caddyhttp.RouteList, child caddy.Module) (string, bool) {
	for _, r := range routes {
		for _, h := range r.Handlers {
			if any(h) == any(child) { // pointers: never an uncomparable pair
				match, err := json.Marshal(r.MatcherSets)
				if err != nil {
					return " match ?", true
				}
				return " match " + string(match), true
			}
		}
	}
	return "", false
}
