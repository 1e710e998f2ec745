package chatroom

import (
	"crypto/tls"
	"net/http/httptest"
	"testing"
)

// TestSameOriginScheme: the default origin rule compares scheme, host and
// port, with https for a TLS request and http otherwise.
func TestSameOriginScheme(t *testing.T) {
	cases := []struct {
		host   string
		tls    bool
		origin string
		want   bool
	}{
		{"chat.example", false, "http://chat.example", true},
		{"chat.example", false, "http://chat.example:80", true},
		{"chat.example", false, "HTTP://CHAT.EXAMPLE", true},
		{"chat.example", false, "https://chat.example", false},
		{"chat.example", false, "ws://chat.example", false},
		{"chat.example", false, "foo://chat.example", false},
		{"chat.example", false, "http://chat.example:8080", false},
		{"chat.example", false, "http://other.example", false},
		{"chat.example", false, "http://user@chat.example", false},
		{"chat.example", false, "http://chat.example/path", false},
		{"chat.example", false, "null", false},
		{"chat.example", true, "https://chat.example", true},
		{"chat.example", true, "https://chat.example:443", true},
		{"chat.example", true, "http://chat.example", false},
		{"chat.example", true, "wss://chat.example", false},
		{"chat.example:8443", true, "https://chat.example:8443", true},
		{"chat.example:8443", true, "https://chat.example", false},
		{"[::1]:8080", false, "http://[::1]:8080", true},
		{"[::1]", false, "http://[::1]", true},
	}
	for _, tc := range cases {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.Host = tc.host
		if tc.tls {
			r.TLS = &tls.ConnectionState{}
		}
		if got := sameOrigin(tc.origin, r); got != tc.want {
			t.Errorf("sameOrigin(%q) for Host %q (TLS %v) = %v, want %v", tc.origin, tc.host, tc.tls, got, tc.want)
		}
	}
}

// TestCheckOriginWildcard: a wildcard is accepted only as the whole first
// label of a domain name.
func TestCheckOriginWildcard(t *testing.T) {
	for o, ok := range map[string]bool{
		"https://*.example.com":      true,
		"https://*.example.com:8443": true,
		"https://x:443":              true,
		"https://*":                  false,
		"https://*.com":              false,
		"https://a*.example.com":     false,
		"https://a.*.example.com":    false,
		"https://*.*.example.com":    false,
		"https://*.127.0.0.1":        false,
	} {
		if err := checkOrigin(o); (err == nil) != ok {
			t.Errorf("checkOrigin(%q) = %v, want ok %v", o, err, ok)
		}
	}
}
