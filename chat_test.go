package chatroom

// Integration tests of the passthrough and of the chat protocol
// (docs/protocol.md) against a real Caddy process and real WebSocket
// clients. The refusals before the upgrade and the limits and faults of the
// README are in faults_test.go.

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// chatSite is a site with the chatroom next to file_server, with no route
// block: the directive order must put chatroom first by itself.
func chatSite(settings string) string {
	return fmt.Sprintf("\tencode gzip\n\troot * {{root}}\n\tchatroom /ws {\n%s\n\t}\n\tfile_server", settings)
}

func TestPassthroughOfPlainRequests(t *testing.T) {
	p := startCaddy(t, chatSite("\t\troom {query.room}"))
	resp, err := http.Get(p.url("http", "/"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "static page") {
		t.Fatalf("GET / = %s %q, want the static page from file_server", resp.Status, body)
	}
	// A plain GET of the chat path is not an upgrade: it goes on to
	// file_server, which has no such file.
	resp, err = http.Get(p.url("http", "/ws"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("plain GET /ws = %s, want 404 from file_server", resp.Status)
	}
}

func TestWelcomeAndOnline(t *testing.T) {
	p := startCaddy(t, chatSite("\t\troom {query.room}"))
	a := dial(t, p.url("ws", "/ws?room=tea"), nil)
	welcome := a.next()
	id := welcome.str("id")
	if _, err := strconv.ParseUint(id, 10, 64); err != nil {
		t.Fatalf("welcome id %q is not a decimal string: %v", id, welcome)
	}
	if welcome.str("msg") != "you are login as "+id+" id" || welcome.str("msg_source") != "server" || welcome.str("room") != "tea" {
		t.Fatalf("welcome = %v, want the seed's text, msg_source server and room tea", welcome)
	}
	online := a.next()
	if online.str("event") != "online" || online.str("msg") != "1 online" || online.str("msg_source") != "server" {
		t.Fatalf("online = %v, want event online, \"1 online\"", online)
	}

	b := dial(t, p.url("ws", "/ws?room=tea"), nil)
	bid, online := b.login()
	if bid == id {
		t.Fatalf("two connections share id %s", id)
	}
	members, _ := online["online"].([]any)
	if online.str("msg") != "2 online" || len(members) != 2 {
		t.Fatalf("second online = %v, want both members", online)
	}
	seen := map[string]bool{}
	for _, m := range members {
		seen[frame(m.(map[string]any)).str("id")] = true
	}
	if !seen[id] || !seen[bid] {
		t.Fatalf("online list %v lacks %s or %s", members, id, bid)
	}
	join := a.next()
	if join.str("event") != "join" || join.str("id") != bid || join.str("msg_source") != "server" || join.str("msg") == "" {
		t.Fatalf("a got %v, want the join of %s", join, bid)
	}
}

func TestChatReachesOthersButNotSender(t *testing.T) {
	p := startCaddy(t, chatSite("\t\troom {query.room}"))
	a := dial(t, p.url("ws", "/ws"), nil)
	aid, _ := a.login()
	b := dial(t, p.url("ws", "/ws"), nil)
	b.login()
	c := dial(t, p.url("ws", "/ws"), nil)
	c.login()
	a.await("join of b", func(f frame) bool { return f.str("event") == "join" })
	a.await("join of c", func(f frame) bool { return f.str("event") == "join" })
	b.await("join of c", func(f frame) bool { return f.str("event") == "join" })

	before := time.Now().Unix()
	a.send(map[string]any{"msg": "I am a php programmer"})
	for _, rcv := range []*wsClient{b, c} {
		f := rcv.next()
		if f.str("from_id") != aid || f.str("msg") != "I am a php programmer" {
			t.Fatalf("got %v, want the chat message from %s", f, aid)
		}
		ts, err := strconv.ParseInt(f.str("msg_time"), 10, 64)
		if err != nil || ts < before-1 || ts > time.Now().Unix()+1 {
			t.Fatalf("msg_time %q is not the current Unix time as a decimal string", f.str("msg_time"))
		}
		if _, named := f["from_nick"]; named {
			t.Fatalf("from_nick present for a member without a name: %v", f)
		}
		if _, server := f["msg_source"]; server {
			t.Fatalf("a member's chat message carries msg_source: %v", f)
		}
	}
	// The sender's next frame is b's message, never its own.
	b.send(map[string]any{"msg": "marker"})
	if f := a.next(); f.str("msg") != "marker" {
		t.Fatalf("sender got %v, want only the marker from b (never its own message)", f)
	}
}

func TestEmptyMessagesAreNotForwarded(t *testing.T) {
	p := startCaddy(t, chatSite("\t\troom {query.room}"))
	a := dial(t, p.url("ws", "/ws"), nil)
	a.login()
	b := dial(t, p.url("ws", "/ws"), nil)
	b.login()
	a.await("join of b", func(f frame) bool { return f.str("event") == "join" })

	for _, raw := range []string{`{}`, `{"msg":""}`, `{"msg":"   \t\n"}`, `{"msg":42}`, `{"msg":null}`, `{"msg":["x"]}`, `{"msg":{"a":1}}`, `{"other":"field"}`} {
		a.sendRaw(1, []byte(raw))
	}
	a.send(map[string]any{"msg": "marker"})
	if f := b.next(); f.str("msg") != "marker" {
		t.Fatalf("b got %v before the marker: an empty or non-string msg was forwarded", f)
	}
	// No error frames either: a's next frame is b's reply.
	b.send(map[string]any{"msg": "reply"})
	if f := a.next(); f.str("msg") != "reply" {
		t.Fatalf("a got %v, want no error for empty messages", f)
	}
}

func TestNickChangesAndErrors(t *testing.T) {
	p := startCaddy(t, chatSite("\t\troom {query.room}"))
	a := dial(t, p.url("ws", "/ws"), nil)
	aid, _ := a.login()
	b := dial(t, p.url("ws", "/ws"), nil)
	b.login()
	a.await("join of b", func(f frame) bool { return f.str("event") == "join" })

	a.send(map[string]any{"nick": "  alice  "})
	ev := b.next()
	if ev.str("event") != "nick" || ev.str("id") != aid || ev.str("nick") != "alice" || ev.str("msg_source") != "server" {
		t.Fatalf("b got %v, want a nick event naming %s alice", ev, aid)
	}
	a.send(map[string]any{"msg": "hi"})
	if f := b.next(); f.str("from_nick") != "alice" || f.str("from_id") != aid {
		t.Fatalf("b got %v, want from_nick alice", f)
	}

	for _, bad := range []string{`{"nick":""}`, `{"nick":"   "}`, `{"nick":"` + strings.Repeat("x", 33) + `"}`, `{"nick":"a\u0007b"}`, `{"nick":7}`, `{"nick":null}`} {
		a.sendRaw(1, []byte(bad))
		f := a.next()
		if f.str("error") != "bad_nick" || f.str("msg_source") != "server" || f.str("msg") == "" {
			t.Fatalf("after %s a got %v, want error bad_nick with a reason", bad, f)
		}
	}
	// 32 characters (not bytes) is allowed.
	long := strings.Repeat("é", 32)
	a.send(map[string]any{"nick": long})
	if f := b.next(); f.str("nick") != long {
		t.Fatalf("b got %v, want the 32-character nick", f)
	}

	// A joiner sees names in the online list and in the join event.
	c := dial(t, p.url("ws", "/ws"), nil)
	cid, online := c.login()
	found := false
	for _, m := range online["online"].([]any) {
		if mf := frame(m.(map[string]any)); mf.str("id") == aid && mf.str("nick") == long {
			found = true
		}
	}
	if !found {
		t.Fatalf("online %v does not show %s's nick", online, aid)
	}
	c.send(map[string]any{"nick": "carol"})
	b.await("join of c", func(f frame) bool { return f.str("event") == "join" && f.str("id") == cid })
	b.await("nick of c", func(f frame) bool { return f.str("event") == "nick" && f.str("nick") == "carol" })
	c.conn.Close()
	leave := b.await("leave of c", func(f frame) bool { return f.str("event") == "leave" })
	if leave.str("id") != cid || leave.str("nick") != "carol" || leave.str("msg_source") != "server" {
		t.Fatalf("leave = %v, want id %s with nick carol", leave, cid)
	}
}

func TestUserFromBasicAuthLocksNick(t *testing.T) {
	// The lowest bcrypt cost keeps the race-detector build quick.
	hash, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	p := startCaddy(t, fmt.Sprintf("\tbasic_auth /ws {\n\t\talice %s\n\t}\n\tchatroom /ws {\n\t\tuser {http.auth.user.id}\n\t}\n\troot * {{root}}\n\tfile_server", hash))

	if _, resp, err := tryDial(t, p.url("ws", "/ws"), nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("dial without credentials: err %v, want 401", err)
	}
	auth := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("alice:secret"))}}
	a := dial(t, p.url("ws", "/ws"), auth)
	welcome := a.next()
	if welcome.str("nick") != "alice" {
		t.Fatalf("welcome = %v, want nick alice from basic_auth", welcome)
	}
	a.next() // online
	b := dial(t, p.url("ws", "/ws"), auth)
	b.login()
	a.await("join of b", func(f frame) bool { return f.str("event") == "join" && f.str("nick") == "alice" })

	a.send(map[string]any{"nick": "mallory"})
	if f := a.next(); f.str("error") != "nick_locked" {
		t.Fatalf("a got %v, want error nick_locked", f)
	}
	a.send(map[string]any{"msg": "signed"})
	if f := b.next(); f.str("from_nick") != "alice" || f.str("msg") != "signed" {
		t.Fatalf("b got %v, want from_nick alice (the rename must not have happened)", f)
	}
}

func TestUserFromHeader(t *testing.T) {
	p := startCaddy(t, chatSite("\t\tuser {http.request.header.Remote-User}"))
	a := dial(t, p.url("ws", "/ws"), http.Header{"Remote-User": {"bob"}})
	if w := a.next(); w.str("nick") != "bob" {
		t.Fatalf("welcome = %v, want nick bob from the header", w)
	}
	a.next()
	// Without the header the template resolves empty: the client may name
	// itself.
	b := dial(t, p.url("ws", "/ws"), nil)
	bid, _ := b.login()
	b.send(map[string]any{"nick": "free"})
	ev := a.await("nick of b", func(f frame) bool { return f.str("event") == "nick" })
	if ev.str("id") != bid || ev.str("nick") != "free" {
		t.Fatalf("a got %v, want b's nick event", ev)
	}
}

func TestRoomsAreSeparate(t *testing.T) {
	p := startCaddy(t, chatSite("\t\troom {query.room}"))
	tea := dial(t, p.url("ws", "/ws?room=tea"), nil)
	tea.login()
	coffee := dial(t, p.url("ws", "/ws?room=coffee"), nil)
	if w := coffee.next(); w.str("room") != "coffee" {
		t.Fatalf("welcome = %v, want room coffee", w)
	}
	if o := coffee.next(); o.str("msg") != "1 online" {
		t.Fatalf("coffee online = %v, want only itself", o)
	}
	lobby := dial(t, p.url("ws", "/ws"), nil)
	if w := lobby.next(); w.str("room") != "lobby" {
		t.Fatalf("welcome = %v, want room lobby when the template resolves empty", w)
	}
	lobby.next()
	tea2 := dial(t, p.url("ws", "/ws?room=tea"), nil)
	tea2.login()
	tea.await("join in tea", func(f frame) bool { return f.str("event") == "join" })

	coffee.send(map[string]any{"msg": "coffee only"})
	lobby.send(map[string]any{"msg": "lobby only"})
	tea2.send(map[string]any{"msg": "tea only"})
	if f := tea.next(); f.str("msg") != "tea only" {
		t.Fatalf("tea got %v, want only its own room's message", f)
	}
	// coffee and lobby had no other members: each sees nothing of the
	// others' rooms, shown by a marker from a newcomer.
	coffee2 := dial(t, p.url("ws", "/ws?room=coffee"), nil)
	coffee2.login()
	if f := coffee.next(); f.str("event") != "join" {
		t.Fatalf("coffee got %v, want the join in its own room first", f)
	}
}

func TestHistoryReplayedToJoiner(t *testing.T) {
	p := startCaddy(t, chatSite("\t\thistory 3\n\t\troom {query.room}"))
	a := dial(t, p.url("ws", "/ws?room=h"), nil)
	aid, _ := a.login()
	obs := dial(t, p.url("ws", "/ws?room=h"), nil)
	obs.login()
	a.await("join of the observer", func(f frame) bool { return f.str("event") == "join" })
	a.send(map[string]any{"nick": "ann"})
	for i := 1; i <= 5; i++ {
		a.send(map[string]any{"msg": fmt.Sprintf("m%d", i)})
	}
	// The observer's copy of m5 shows the server has handled all five.
	obs.await("m5", func(f frame) bool { return f.str("msg") == "m5" })
	w := dial(t, p.url("ws", "/ws?room=h"), nil)
	w.login()
	for i := 3; i <= 5; i++ {
		f := w.next()
		if f.str("msg") != fmt.Sprintf("m%d", i) || f.str("from_id") != aid || f.str("from_nick") != "ann" || f.str("msg_time") == "" {
			t.Fatalf("history frame %d = %v, want m%d from %s (ann)", i-2, f, i, aid)
		}
	}
	w.send(map[string]any{"msg": "live"})
	if f := a.await("live message", func(f frame) bool { return f.str("msg") == "live" }); f.str("msg") != "live" {
		t.Fatal("unreachable")
	}
	// A room's history is its own.
	other := dial(t, p.url("ws", "/ws?room=other"), nil)
	other.login()
	other2 := dial(t, p.url("ws", "/ws?room=other"), nil)
	other2.login()
	if f := other.next(); f.str("event") != "join" {
		t.Fatalf("other room got %v, want no history from room h", f)
	}
}

func TestOrderPerSender(t *testing.T) {
	p := startCaddy(t, chatSite("\t\trate_limit 10000 1s\n\t\tsend_queue 4096"))
	r := dial(t, p.url("ws", "/ws"), nil)
	r.login()
	const senders, each = 3, 200
	ids := make([]string, senders)
	clients := make([]*wsClient, senders)
	for i := range clients {
		clients[i] = dial(t, p.url("ws", "/ws"), nil)
		ids[i], _ = clients[i].login()
		r.await("join", func(f frame) bool { return f.str("event") == "join" && f.str("id") == ids[i] })
	}
	done := make(chan struct{})
	for i, c := range clients {
		go func() {
			defer func() { done <- struct{}{} }()
			for n := 0; n < each; n++ {
				data := fmt.Sprintf(`{"msg":"%d:%d"}`, i, n)
				c.wmu.Lock()
				err := c.conn.WriteMessage(1, []byte(data))
				c.wmu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	for range clients {
		<-done
	}
	next := make([]int, senders)
	for got := 0; got < senders*each; got++ {
		f := r.await("chat", func(f frame) bool { return f.str("from_id") != "" })
		var s, n int
		if _, err := fmt.Sscanf(f.str("msg"), "%d:%d", &s, &n); err != nil {
			t.Fatalf("unexpected message %v", f)
		}
		if f.str("from_id") != ids[s] {
			t.Fatalf("message %q from %s, want from %s", f.str("msg"), f.str("from_id"), ids[s])
		}
		if n != next[s] {
			t.Fatalf("sender %d: got message %d, want %d: order per sender broken", s, n, next[s])
		}
		next[s]++
	}
}

func TestSeedClientSeesSeedFields(t *testing.T) {
	// A client written for the seed reads from_id, msg and msg_time, and
	// shows every server frame by its msg: check every server frame has it.
	p := startCaddy(t, chatSite(""))
	a := dial(t, p.url("ws", "/ws"), nil)
	var frames []frame
	// A connection joins its room just after the upgrade: a must be in
	// the room (its welcome arrived) before b dials, to see b's join.
	frames = append(frames, a.next(), a.next()) // welcome, online
	b := dial(t, p.url("ws", "/ws"), nil)
	frames = append(frames, a.next()) // join of b
	a.send(map[string]any{"nick": "x"})
	b.next()
	b.next()
	frames = append(frames, b.next()) // nick event
	a.sendRaw(1, []byte("not json"))
	frames = append(frames, a.next()) // error
	for _, f := range frames {
		if f.str("msg_source") != "server" || f.str("msg") == "" {
			t.Errorf("server frame %v lacks msg or msg_source", f)
		}
	}
}
