package chatroom

import (
	"encoding/json"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

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
