package memcached

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// One fuzz target per decoder of memcached values. Their seed corpus runs
// with every `go test`; `go test -fuzz FuzzDecodeEntry ./internal/memcached`
// explores further. Each checks that whatever a decoder accepts is what the
// handler could have produced itself.

var fuzzLimits = limits{maxMessage: 256}

func FuzzParseCounter(f *testing.F) {
	for _, s := range []string{"0", "1", "18446744073709551615", "18446744073709551616", "-1", "12 ", "", " ", "1e9", strings.Repeat("9", 40)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		if _, err := parseCounter(value); err == nil && len(value) > 64 {
			t.Fatalf("accepted a counter of %d bytes", len(value))
		}
	})
}

func FuzzParseIndex(f *testing.F) {
	for _, s := range []string{"0123456789abcdef", "0123456789abcdef 0123456789abcdef", strings.Repeat("x", 300), "a b\x00c", "0123456789ABCDEF"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		ids, _ := parseIndex(value)
		if len(ids) > maxIndexNodes {
			t.Fatalf("%d ids", len(ids))
		}
		seen := make(map[string]bool)
		for _, id := range ids {
			if !validNodeID(id) || seen[id] {
				t.Fatalf("accepted id %q", id)
			}
			seen[id] = true
		}
	})
}

// checkAccepted fails when an accepted event holds what no client could
// have made the handler send.
func checkAccepted(t *testing.T, ev *chat.Event) {
	t.Helper()
	if !validID(ev.ID) {
		t.Fatalf("accepted id %q", ev.ID)
	}
	if ev.Nick != "" {
		if clean, err := chat.CleanName(ev.Nick); err != nil || clean != ev.Nick {
			t.Fatalf("accepted nick %q", ev.Nick)
		}
	}
	if len(ev.Msg) > fuzzLimits.maxMessage || !utf8.ValidString(ev.Msg) {
		t.Fatalf("accepted text of %d bytes", len(ev.Msg))
	}
	switch ev.Kind {
	case chat.KindChat, chat.KindJoin, chat.KindLeave, chat.KindNick:
	default:
		t.Fatalf("accepted kind %q", ev.Kind)
	}
}

func FuzzDecodeEntry(f *testing.F) {
	good, _ := json.Marshal(logEntry{Node: "0123456789abcdef", Gen: 3, Room: "lobby", Event: &chat.Event{Kind: chat.KindChat, ID: "12", Nick: "ann", Msg: "hi", Time: "1", Seq: 5}})
	f.Add(good)
	for _, s := range []string{
		`{"node":"0123456789abcdef","room":"lobby","ev":{"kind":"join","id":"1","nick":"\u202eevil\u0007\u0000"}}`,
		`{"node":"0123456789abcdef","room":"lobby","ev":{"kind":"leave","id":"1"}}`,
		`{"node":"x","room":"lobby","ev":{"kind":"chat","id":"1","msg":"hi"}}`,
		`{"node":"0123456789abcdef","room":"a b","ev":{"kind":"chat","id":"1","msg":"hi"}}`,
		`{"node":"0123456789abcdef","room":"lobby","ev":{"kind":"chat","id":"1","msg":"hi","seq":18446744073709551615}}`,
		`{"node":"0123456789abcdef","room":"lobby","ev":{"kind":"system","id":"1"}}`,
		`null`, `[]`, `{"ev":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		e, err := decodeEntry(value, fuzzLimits)
		if err != nil {
			return
		}
		if !validNodeID(e.Node) || !chat.ValidRoom(e.Room) {
			t.Fatalf("accepted node %q room %q", e.Node, e.Room)
		}
		checkAccepted(t, e.Event)
	})
}

func FuzzDecodeHeader(f *testing.F) {
	for _, s := range []string{`{"gen":1,"chunks":2}`, `{"gen":1,"chunks":-1}`, `{"gen":1,"chunks":100000}`, `{}`, `x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		h, err := decodeHeader(value)
		if err == nil && (h.Chunks < 0 || h.Chunks > maxChunks) {
			t.Fatalf("accepted %d chunks", h.Chunks)
		}
	})
}

func FuzzDecodeChunk(f *testing.F) {
	for _, s := range []string{
		`{"gen":1,"rooms":{"lobby":{"n":2,"m":[{"id":"1","nick":"ann"},{"id":"2"}]}}}`,
		`{"gen":1,"rooms":{"lobby":{"n":-5}}}`,
		`{"gen":1,"rooms":{"lobby":{"n":1,"m":[{"id":"` + strings.Repeat("1", 300) + `"}]}}}`,
		`{"gen":1,"rooms":{"bad room":{"n":1}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		c, err := decodeChunk(value, 4)
		if err != nil {
			return
		}
		for room, wr := range c.Rooms {
			if !chat.ValidRoom(room) || wr.N < 0 || wr.N > maxRoomCount || len(wr.M) > 4 {
				t.Fatalf("accepted room %q with %d members, %d listed", room, wr.N, len(wr.M))
			}
			for _, m := range wr.M {
				checkAccepted(t, chat.NewPresence(chat.KindJoin, m))
			}
		}
	})
}

func FuzzDecodeHistory(f *testing.F) {
	for _, s := range []string{
		`{"events":[{"kind":"chat","id":"1","msg":"a","seq":1},{"kind":"chat","id":"2","msg":"b","seq":2}]}`,
		`{"events":[{"kind":"join","id":"1"}]}`,
		`{"events":[{"kind":"chat","id":"1","msg":"a","seq":2},{"kind":"chat","id":"2","msg":"b","seq":1}]}`,
		`{"events":null}`,
		`{"events":[{"kind":"chat","id":"1","msg":"a","seq":1},{"kind":"chat","id":"2","msg":"no seq"}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		events, _, err := decodeHistory(value, fuzzLimits, 3)
		if err != nil {
			return
		}
		if len(events) > 3 {
			t.Fatalf("%d events kept, want at most 3", len(events))
		}
		for _, ev := range events {
			if ev.Kind != chat.KindChat {
				t.Fatalf("history holds a %s event", ev.Kind)
			}
			if ev.Seq == 0 {
				t.Fatalf("history holds an event without a seq: %+v", ev)
			}
			checkAccepted(t, ev)
		}
	})
}
