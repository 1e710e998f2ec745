package chatroom

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// originSet is the `origins` setting, normalised: browsers send
// "https://x" where an operator may write "https://x:443", and both mean
// the same origin, so each side is compared as scheme://host:port with
// the scheme's default port filled in, case folded.
type originSet struct {
	any   bool            // "*"
	exact map[string]bool // "https://chat.example:443"
	// wild are the "scheme://*.domain[:port]" entries: any subdomain of
	// domain, at any depth, and not domain itself. Each holds the
	// normalised form with the "*" cut off, e.g. "https://.example.com:443"
	// split as scheme prefix "https://" and suffix ".example.com:443".
	wild []wildOrigin
}

type wildOrigin struct {
	scheme string // "https"
	suffix string // ".example.com:443"
}

// newOriginSet builds the set from checked origins (checkOrigin).
func newOriginSet(origins []string) originSet {
	s := originSet{exact: make(map[string]bool, len(origins))}
	for _, o := range origins {
		if o == "*" {
			s.any = true
			continue
		}
		scheme, hostPort, ok := normaliseOrigin(o)
		if !ok {
			continue // Validate refused it already
		}
		if rest, found := strings.CutPrefix(hostPort, "*."); found {
			s.wild = append(s.wild, wildOrigin{scheme: scheme, suffix: "." + rest})
			continue
		}
		s.exact[scheme+"://"+hostPort] = true
	}
	return s
}

// allows reports whether the Origin header value origin is in the set.
func (s originSet) allows(origin string) bool {
	if s.any {
		return true
	}
	scheme, hostPort, ok := normaliseOrigin(origin)
	if !ok || strings.Contains(hostPort, "*") {
		return false
	}
	if s.exact[scheme+"://"+hostPort] {
		return true
	}
	for _, w := range s.wild {
		// The label before the suffix must not be empty: "https://.example.com"
		// is no subdomain.
		if scheme == w.scheme && len(hostPort) > len(w.suffix) && strings.HasSuffix(hostPort, w.suffix) {
			return true
		}
	}
	return false
}

// normaliseOrigin splits an origin into its scheme and host:port, lower
// case, with the scheme's default port added when it has none. ok is false
// for anything but a bare http or https origin.
func normaliseOrigin(origin string) (scheme, hostPort string, ok bool) {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return "", "", false
	}
	scheme = strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", "", false
	}
	return scheme, strings.ToLower(withPort(u.Host, scheme)), true
}

// checkOrigin checks an allowed origin: "*", scheme://host[:port], or
// scheme://*.domain[:port] for every subdomain of domain.
func checkOrigin(o string) error {
	if o == "*" {
		return nil
	}
	u, err := url.Parse(o)
	if err != nil {
		return fmt.Errorf("origin %q: %w", o, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("origin %q: want scheme://host[:port] with scheme http or https, scheme://*.domain[:port], or *", o)
	}
	host, wild := strings.CutPrefix(u.Hostname(), "*.")
	if host == "" || strings.Contains(host, "*") || wild && (net.ParseIP(host) != nil || !strings.Contains(host, ".")) {
		return fmt.Errorf("origin %q: a wildcard is allowed only as the whole first label of a domain name with at least two labels after it, as in https://*.example.com", o)
	}
	return nil
}
