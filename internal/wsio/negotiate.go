package wsio

import (
	"net/http"
	"strconv"
	"strings"
)

// Compression is the permessage-deflate (RFC 7692) setting of an Upgrader.
// The zero value is off.
type Compression struct {
	// Enabled lets a client that offers permessage-deflate have it, with
	// no context takeover in either direction: every message is
	// compressed on its own, so that neither side keeps a window between
	// messages.
	Enabled bool

	// MinSize is the shortest payload, in bytes, that is sent compressed:
	// shorter frames go plain, where compression would save little and
	// cost a compressor's time. Values below 1 count as 1.
	MinSize int
}

// acceptsDeflate reports whether one of the permessage-deflate offers in
// the request's Sec-WebSocket-Extensions can be answered with the one
// response gorilla writes, "permessage-deflate;
// server_no_context_takeover; client_no_context_takeover".
//
// gorilla accepts any offer named permessage-deflate; this declines what
// that response would break (RFC 7692 §7.1): an offer with
// server_max_window_bits, which the server must echo and which
// compress/flate cannot honour below 15, and offers with unknown,
// repeated or malformed parameters, which must be declined.
func acceptsDeflate(h http.Header) bool {
	for _, line := range h.Values("Sec-WebSocket-Extensions") {
		for _, offer := range strings.Split(line, ",") {
			if acceptableOffer(offer) {
				return true
			}
		}
	}
	return false
}

// acceptableOffer reports whether one extension offer is permessage-deflate
// with only parameters the fixed response satisfies. Quoted values are not
// needed by any parameter of permessage-deflate but are allowed by the
// grammar: a quoted token is unquoted before it is checked.
func acceptableOffer(offer string) bool {
	parts := strings.Split(offer, ";")
	if !strings.EqualFold(strings.TrimSpace(parts[0]), "permessage-deflate") {
		return false
	}
	seen := make(map[string]bool, len(parts)-1)
	for _, p := range parts[1:] {
		name, value, hasValue := strings.Cut(p, "=")
		name = strings.ToLower(strings.TrimSpace(name))
		value = strings.TrimSpace(value)
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		if name == "" || seen[name] {
			return false
		}
		seen[name] = true
		switch name {
		case "server_no_context_takeover", "client_no_context_takeover":
			if hasValue {
				return false
			}
		case "client_max_window_bits":
			// The client may use any window: the response leaves it at
			// its choice, and the inflater takes up to 15 bits.
			if hasValue && !windowBits(value) {
				return false
			}
		default:
			// server_max_window_bits included: see acceptsDeflate.
			return false
		}
	}
	return true
}

// windowBits reports whether s is a window size RFC 7692 allows: 8 to 15,
// without leading zeros.
func windowBits(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 8 && n <= 15 && s[0] != '0' && s[0] != '+'
}
