package chatroom

// Fuzz targets for the two parsers that take input from outside: the
// inbound frame decoder (any client) and the Caddyfile parser (any config).
// Their seeds run as ordinary tests; `go test -fuzz FuzzDecodeInbound` and
// `go test -fuzz FuzzCaddyfile` explore further.

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzDecodeInbound checks that decodeInbound and the accessors never
// panic, accept exactly the JSON objects, and keep the protocol's rules
// (docs/protocol.md): a chat text is never empty or only white space and is
// the frame's msg string; a nick is 1 to 32 characters, trimmed, with no
// control characters.
func FuzzDecodeInbound(f *testing.F) {
	for _, seed := range []string{
		`{"msg":"I am a php programmer"}`,
		`{"nick":"alice"}`,
		`{"msg":"hi","nick":"bob"}`,
		`{"msg":"  "}`,
		`{"msg":""}`,
		`{"msg":42}`,
		`{"msg":null}`,
		`{"msg":["a"]}`,
		`{"nick":"  padded  "}`,
		`{"nick":"` + strings.Repeat("n", 33) + `"}`,
		`{"nick":"tab\there"}`,
		`{"nick":"\u0007bell"}`,
		`{"nick":null}`,
		`{"msg":"\u00a0\u2003"}`,
		`{"msg":"\ud800"}`,
		`{"msg":"a","msg":"b"}`,
		`{"MSG":"upper case key"}`,
		`{"msg":"a","MSG":"b"}`,
		`{"Nick":"kelvin \u212a"}`,
		`{"msg":"x"} trailing`,
		` {"msg":"leading space"} `,
		`[{"msg":"in an array"}]`,
		`"a string"`,
		`42`,
		`null`,
		``,
		`{`,
		`{"msg":"` + strings.Repeat("\\\"", 50) + `"}`,
		"{\"msg\":\"bad \xff utf8\"}",
		"\ufeff{\"msg\":\"bom\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := decodeInbound(data)
		text := in.chatText()
		nick, nickErr := in.nickRequest()
		if !utf8.Valid(data) {
			// The connection closes with 1007 before decoding: only
			// "never panics" applies.
			return
		}

		trimmed := bytes.TrimLeft(data, " \t\r\n")
		isObject := json.Valid(data) && len(trimmed) > 0 && trimmed[0] == '{'
		if (err == nil) != isObject {
			t.Fatalf("decodeInbound(%q) error %v, but the frame is a JSON object: %v", data, err, isObject)
		}
		if err != nil {
			if text != "" || in.hasNick() {
				t.Fatalf("a refused frame %q yields msg %q, nick %v", data, text, in.hasNick())
			}
			return
		}

		var fields map[string]any
		if err := json.Unmarshal(data, &fields); err != nil {
			t.Fatalf("decodeInbound accepted %q, which is not a JSON object: %v", data, err)
		}
		msg, isString := fields["msg"].(string)
		wantText := ""
		if isString && strings.TrimSpace(msg) != "" {
			wantText = msg
		}
		if text != wantText {
			t.Fatalf("chatText of %q is %q, want %q", data, text, wantText)
		}
		if text != "" && strings.TrimSpace(text) == "" {
			t.Fatalf("chatText of %q is only white space", data)
		}

		_, hasNick := fields["nick"]
		if in.hasNick() != hasNick {
			t.Fatalf("hasNick of %q is %v, want %v", data, in.hasNick(), hasNick)
		}
		if nickErr == nil {
			if n := utf8.RuneCountInString(nick); n < 1 || n > chat.MaxNameRunes {
				t.Fatalf("nick %q from %q has %d characters", nick, data, n)
			}
			if nick != strings.TrimSpace(nick) || strings.IndexFunc(nick, unicode.IsControl) >= 0 {
				t.Fatalf("nick %q from %q is untrimmed or has control characters", nick, data)
			}
			if s, _ := fields["nick"].(string); strings.TrimSpace(s) != nick {
				t.Fatalf("nick %q from %q is not the frame's nick", nick, data)
			}
		} else if nickErr.Error() == "" {
			t.Fatalf("nick error of %q has no text for the person", data)
		}
	})
}

// FuzzCaddyfile checks that UnmarshalCaddyfile never panics, and that a
// block it accepts gives a config that Validate accepts (after the defaults
// Provision fills in) and that survives a JSON round trip unchanged.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"chatroom",
		"chatroom {\n}",
		"chatroom {\n\tmemcached 127.0.0.1:11211 [::1]:11212\n\tprefix chat:\n}",
		"chatroom {\n\troom {query.room}\n\tuser {http.auth.user.id}\n}",
		"chatroom {\n\torigins https://chat.example http://localhost:8080 *\n}",
		"chatroom {\n\thistory 50\n\tmax_message_size 16KiB\n\trate_limit 5 10s\n}",
		"chatroom {\n\tsend_queue 64\n\tmax_connections 1000\n\tping_interval 10s\n\tttl 1m\n}",
		"chatroom {\n\tmemcached\n}",
		"chatroom {\n\tmemcached localhost\n}",
		"chatroom {\n\tmemcached :11211\n}",
		"chatroom {\n\tprefix \"has space\"\n}",
		"chatroom {\n\torigins ftp://x\n}",
		"chatroom {\n\thistory -1\n}",
		"chatroom {\n\tmax_message_size 0\n}",
		"chatroom {\n\trate_limit 0 1s\n}",
		"chatroom {\n\trate_limit 5\n}",
		"chatroom {\n\tping_interval -1s\n}",
		"chatroom {\n\tttl forever\n}",
		"chatroom {\n\tunknown 1\n}",
		"chatroom extra",
		"chatroom {\n\troom\n}",
		"chatroom {\n\tsend_queue 99999999999999999999\n}",
		"chatroom {\n\tmax_message_size 1.5GiB\n}",
		"chatroom {\n\trate_limit 1 1ns\n}",
		"chatroom {\n\tttl 1d\n}",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		var h Handler
		d := caddyfile.NewTestDispenser(input)
		if err := h.UnmarshalCaddyfile(d); err != nil {
			if err.Error() == "" {
				t.Fatalf("error without text for %q", input)
			}
			return
		}
		data, err := json.Marshal(&h)
		if err != nil {
			t.Fatalf("marshal the config of %q: %v", input, err)
		}
		var back Handler
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatalf("unmarshal %s (from %q): %v", data, input, err)
		}
		if !reflect.DeepEqual(exportedFields(&h), exportedFields(&back)) {
			t.Fatalf("JSON round trip of %q changed the config: %s", input, data)
		}
		h.setDefaults()
		if err := h.Validate(); err != nil {
			t.Fatalf("the Caddyfile parser accepted %q, but Validate refuses it: %v", input, err)
		}
	})
}

// exportedFields returns the configuration of h without its runtime state.
func exportedFields(h *Handler) Handler {
	return Handler{
		Memcached:      h.Memcached,
		Prefix:         h.Prefix,
		Room:           h.Room,
		User:           h.User,
		Origins:        h.Origins,
		History:        h.History,
		MaxMessageSize: h.MaxMessageSize,
		RateLimit:      h.RateLimit,
		SendQueue:      h.SendQueue,
		MaxConnections: h.MaxConnections,
		PingInterval:   h.PingInterval,
		TTL:            h.TTL,
	}
}
