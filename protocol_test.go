package chatroom

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

func TestDecodeInbound(t *testing.T) {
	tests := []struct {
		in        string
		wantErr   bool
		notObject bool
		chat      string
		hasNick   bool
	}{
		{in: `{"msg":"I am a php programmer"}`, chat: "I am a php programmer"},
		{in: ` {"msg":" spaced "} `, chat: " spaced "},
		{in: `{"msg":""}`},
		{in: `{"msg":"  \n"}`},
		{in: `{"msg":5}`},
		{in: `{"msg":null}`},
		{in: `{}`},
		{in: `{"nick":"al"}`, hasNick: true},
		{in: `{"nick":"al","msg":"both"}`, hasNick: true, chat: "both"},
		{in: `{"MSG":"keys are case-sensitive","Nick":"x"}`},
		{in: `{"msg":"first","msg":"last"}`, chat: "last"},
		{in: `not json`, wantErr: true},
		{in: `{"msg":"unterminated`, wantErr: true},
		{in: ``, wantErr: true},
		{in: `[1,2]`, wantErr: true, notObject: true},
		{in: `"text"`, wantErr: true, notObject: true},
		{in: `null`, wantErr: true, notObject: true},
		{in: `42`, wantErr: true, notObject: true},
	}
	for _, tt := range tests {
		got, err := decodeInbound([]byte(tt.in))
		if (err != nil) != tt.wantErr {
			t.Errorf("decodeInbound(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if tt.notObject != errors.Is(err, errNotObject) {
			t.Errorf("decodeInbound(%q) error = %v, want errNotObject %v", tt.in, err, tt.notObject)
		}
		if err != nil {
			continue
		}
		if c := got.chatText(); c != tt.chat {
			t.Errorf("decodeInbound(%q).chatText() = %q, want %q", tt.in, c, tt.chat)
		}
		if got.hasNick() != tt.hasNick {
			t.Errorf("decodeInbound(%q).hasNick() = %v, want %v", tt.in, got.hasNick(), tt.hasNick)
		}
	}
}

func TestNickRules(t *testing.T) {
	good := map[string]string{
		"alice":                             "alice",
		"  bob \t":                          "bob",
		strings.Repeat("ü", 32):             strings.Repeat("ü", 32),
		"名前":                                "名前",
		"a b":                               "a b",
		" " + strings.Repeat("x", 32) + " ": strings.Repeat("x", 32),
	}
	for in, want := range good {
		if got, err := chat.CleanName(in); err != nil || got != want {
			t.Errorf("chat.CleanName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "   ", strings.Repeat("x", 33), "a\x00b", "a\nb", "tab\there", "x\u0085x", "x\u009bx"} {
		if got, err := chat.CleanName(in); err == nil {
			t.Errorf("chat.CleanName(%q) = %q, want an error", in, got)
		}
	}
}

func TestServerFrames(t *testing.T) {
	check := func(name string, data []byte, want map[string]any) {
		t.Helper()
		var got map[string]any
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for k, v := range want {
			if gb, _ := json.Marshal(got[k]); string(gb) != mustString(v) {
				t.Errorf("%s: %s = %s, want %s (frame %s)", name, k, gb, mustString(v), data)
			}
		}
	}
	check("welcome", welcomeMessage(chat.Member{ID: "23"}, "lobby"), map[string]any{
		"msg": "you are login as 23 id", "msg_source": "server", "id": "23", "room": "lobby"})
	check("online", onlineMessage([]chat.Member{{ID: "12"}, {ID: "23", Nick: "alice"}}), map[string]any{
		"msg": "2 online", "msg_source": "server", "event": "online",
		"online": []any{map[string]any{"id": "12"}, map[string]any{"id": "23", "nick": "alice"}}})
	check("empty online", onlineMessage(nil), map[string]any{"msg": "0 online", "online": []any{}})
	now := time.Unix(1456690889, 0)
	check("chat", encodeFrame(chat.NewChat(chat.Member{ID: "12"}, "I am a php programmer", now)), map[string]any{
		"from_id": "12", "msg": "I am a php programmer", "msg_time": "1456690889", "from_nick": nil})
	check("named chat", encodeFrame(chat.NewChat(chat.Member{ID: "12", Nick: "alice"}, "hi", now)), map[string]any{"from_nick": "alice"})
	check("join", encodeFrame(&chat.Event{Kind: chat.KindJoin, ID: "23"}), map[string]any{
		"msg": "23 joined", "msg_source": "server", "event": "join", "id": "23"})
	check("leave", encodeFrame(&chat.Event{Kind: chat.KindLeave, ID: "23", Nick: "al"}), map[string]any{
		"msg_source": "server", "event": "leave", "id": "23", "nick": "al"})
	check("nick", encodeFrame(&chat.Event{Kind: chat.KindNick, ID: "23", Nick: "al"}), map[string]any{
		"msg": `23 is now "al"`, "msg_source": "server", "event": "nick", "id": "23", "nick": "al", "user": nil})
	// A name cannot read as server text: it is quoted, its quotes escaped.
	check("forged text", encodeFrame(&chat.Event{Kind: chat.KindLeave, ID: "23", Nick: `x" left, 7 ("y`}), map[string]any{
		"msg": `23 ("x\" left, 7 (\"y") left`})
	// Authenticated names travel as user / from_user, marked in the text.
	authed := chat.Member{ID: "23", Nick: "alice", User: "alice"}
	check("user join", encodeFrame(chat.NewPresence(chat.KindJoin, authed)), map[string]any{
		"msg": `23 (user "alice") joined`, "id": "23", "nick": "alice", "user": "alice"})
	check("user chat", encodeFrame(chat.NewChat(authed, "hi", now)), map[string]any{"from_nick": "alice", "from_user": "alice"})
	check("nick chat", encodeFrame(chat.NewChat(chat.Member{ID: "12", Nick: "alice"}, "hi", now)), map[string]any{"from_nick": "alice", "from_user": nil})
	check("user welcome", welcomeMessage(authed, "lobby"), map[string]any{"nick": "alice", "user": "alice"})
	check("user online", onlineMessage([]chat.Member{authed, {ID: "24", Nick: "alice"}}), map[string]any{
		"online": []any{map[string]any{"id": "23", "nick": "alice", "user": "alice"}, map[string]any{"id": "24", "nick": "alice"}}})
	check("error", errorMessage(ErrCodeRateLimited, "slow down"), map[string]any{
		"msg": "slow down", "msg_source": "server", "error": "rate_limited"})
}

func mustString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestEmbeddedHistory(t *testing.T) {
	r := newEmbeddedRegistry()
	// Chat events are held for resumes even with history off; how many a
	// joiner gets is its handler's history, the n of History. (Bounds by
	// time and count: history_test.go.)
	r.Publish("a", &chat.Event{Kind: chat.KindChat, Msg: "0"})
	r.KeepHistory(3)
	for _, m := range []string{"1", "2", "3", "4", "5"} {
		r.Publish("a", &chat.Event{Kind: chat.KindChat, Msg: m})
	}
	r.Publish("a", &chat.Event{Kind: chat.KindJoin, ID: "9"})
	r.Publish("b", &chat.Event{Kind: chat.KindChat, Msg: "other room"})
	msgs := func(evs []*chat.Event) string {
		var s []string
		for _, ev := range evs {
			s = append(s, ev.Msg)
		}
		return strings.Join(s, ",")
	}
	if got := msgs(r.History("a", 3)); got != "3,4,5" {
		t.Errorf("History(a, 3) = %s, want 3,4,5 (the last three chat events, oldest first)", got)
	}
	if got := msgs(r.History("a", 2)); got != "4,5" {
		t.Errorf("History(a, 2) = %s, want 4,5", got)
	}
	if got := msgs(r.History("a", 10)); got != "0,1,2,3,4,5" {
		t.Errorf("History(a, 10) = %s, want 0 to 5: all within the resume window", got)
	}
	r.KeepHistory(5)
	r.KeepHistory(1) // never lowers
	if got := r.keep.Load(); got != 5 {
		t.Errorf("keep = %d after KeepHistory(5) and (1), want 5", got)
	}
	if got := msgs(r.History("nope", 10)); got != "" {
		t.Errorf("History of an unknown room = %s, want none", got)
	}
}

func TestEmbeddedHistoryRoomsBounded(t *testing.T) {
	r := newEmbeddedRegistry()
	r.KeepHistory(1)
	for i := 0; i < maxIdleHistoryRooms+10; i++ {
		r.Publish("room"+strconv.Itoa(i), &chat.Event{Kind: chat.KindChat, Msg: "x"})
	}
	if n := len(r.history); n != maxIdleHistoryRooms {
		t.Fatalf("embedded registry keeps history of %d rooms, want at most %d", n, maxIdleHistoryRooms)
	}
}

func TestEmbeddedIDsUnique(t *testing.T) {
	r := newEmbeddedRegistry()
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := r.NewID(t.Context())
		if seen[id] {
			t.Fatalf("id %s handed out twice", id)
		}
		seen[id] = true
	}
}
