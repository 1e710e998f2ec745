package chatroom

// Tests of the README's "Limits and faults" and of the HTTP refusals before
// the upgrade (docs/protocol.md), each against a real Caddy with real WebSocket clients. Each
// checks what the server does to the offender and that the other members
// lose nothing.

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// faultSite is a site body with one chatroom handler at /ws configured by
// the given subdirectives (one per line), next to a file server.
func faultSite(subdirectives ...string) string {
	var b strings.Builder
	b.WriteString("\tchatroom /ws")
	if len(subdirectives) > 0 {
		b.WriteString(" {\n")
		for _, s := range subdirectives {
			b.WriteString("\t\t" + s + "\n")
		}
		b.WriteString("\t}")
	}
	b.WriteString("\n\troot * {{root}}\n\tfile_server")
	return b.String()
}

// isChat matches the chat frame text from the member id.
func isChat(from, text string) func(frame) bool {
	return func(f frame) bool { return f.str("from_id") == from && f.str("msg") == text }
}

// isEvent matches a presence frame of kind about the member id.
func isEvent(kind, id string) func(frame) bool {
	return func(f frame) bool { return f.str("event") == kind && f.str("id") == id }
}

// room is a set of logged-in clients of one room, each having seen the
// others join.
type roomClients struct {
	clients []*wsClient
	ids     []string
}

// joinRoom connects n clients to url one after another and waits until each
// has seen every later one join, so that every member is in the room before
// the test goes on.
func joinRoom(t *testing.T, url string, n int) roomClients {
	t.Helper()
	var rc roomClients
	for i := range n {
		c := dial(t, url, nil)
		c.name = fmt.Sprintf("client %d", i)
		id, _ := c.login()
		for _, earlier := range rc.clients {
			earlier.await("join of "+id, isEvent("join", id))
		}
		rc.clients = append(rc.clients, c)
		rc.ids = append(rc.ids, id)
	}
	return rc
}

// chatRound has every client send one message and checks that every other
// client receives it: the room works.
func (rc roomClients) chatRound(t *testing.T, tag string) {
	t.Helper()
	for i, c := range rc.clients {
		text := fmt.Sprintf("%s from %s", tag, rc.ids[i])
		c.send(map[string]any{"msg": text})
		for j, other := range rc.clients {
			if j != i {
				other.await(text, isChat(rc.ids[i], text))
			}
		}
	}
}

// TestInvalidJSONKeepsConnection: a frame that is not JSON, or JSON that is
// not an object, gets an invalid_json error frame; the connection stays,
// can still chat, and nothing was relayed for the refused frames.
func TestInvalidJSONKeepsConnection(t *testing.T) {
	p := startCaddy(t, faultSite())
	rc := joinRoom(t, p.url("ws", "/ws"), 2)
	a, b := rc.clients[0], rc.clients[1]

	bad := []string{
		`not json`,
		`{"msg":`,
		`{"msg":"x"} trailing`,
		`{'msg':'single quotes'}`,
		``,
		`[{"msg":"in an array"}]`,
		`"a string"`,
		`42`,
		`null`,
		`true`,
	}
	for _, payload := range bad {
		a.sendRaw(websocket.TextMessage, []byte(payload))
		f := a.next()
		if f.str("error") != ErrCodeInvalidJSON || f.str("msg_source") != "server" || f.str("msg") == "" {
			t.Errorf("frame %q: got %v, want an invalid_json error frame with a reason", payload, f)
		}
	}
	a.send(map[string]any{"msg": "still here"})
	if f := b.next(); !isChat(rc.ids[0], "still here")(f) {
		t.Fatalf("b's next frame after a's refused frames is %v, want a's chat message", f)
	}
	b.send(map[string]any{"msg": "and you?"})
	if f := a.next(); !isChat(rc.ids[1], "and you?")(f) {
		t.Fatalf("a's next frame is %v, want b's chat message", f)
	}
}

// TestFrameViolationsClose: an oversize frame closes with 1009, a binary
// frame with 1003, invalid UTF-8 with 1007. Each time the other members stay
// connected, see the offender leave, keep chatting, and nothing of the
// offending frame is relayed.
func TestFrameViolationsClose(t *testing.T) {
	p := startCaddy(t, faultSite("max_message_size 1KiB"))
	rc := joinRoom(t, p.url("ws", "/ws"), 2)

	// A frame of exactly max_message_size is accepted.
	exact := `{"msg":"` + strings.Repeat("e", 1024-len(`{"msg":""}`)) + `"}`
	offender := dial(t, p.url("ws", "/ws"), nil)
	oid, _ := offender.login()
	for _, c := range rc.clients {
		c.await("join of "+oid, isEvent("join", oid))
	}
	offender.sendRaw(websocket.TextMessage, []byte(exact))
	for _, c := range rc.clients {
		if f := c.next(); f.str("from_id") != oid || len(f.str("msg")) != 1024-len(`{"msg":""}`) {
			t.Fatalf("a frame of exactly max_message_size: got %v, want it relayed", f)
		}
	}
	_ = offender.conn.Close()
	for _, c := range rc.clients {
		c.await("the first offender's leave", isEvent("leave", oid))
	}

	cases := []struct {
		name   string
		kind   int
		data   []byte
		code   int
		reason string
	}{
		{"oversize", websocket.TextMessage, []byte(`{"msg":"` + strings.Repeat("o", 1024) + `"}`), websocket.CloseMessageTooBig, dropTooBig},
		{"binary", websocket.BinaryMessage, []byte(`{"msg":"binary"}`), websocket.CloseUnsupportedData, dropBinary},
		{"invalid UTF-8", websocket.TextMessage, []byte("{\"msg\":\"bad \xff\xfe utf8\"}"), websocket.CloseInvalidFramePayloadData, dropBadUTF8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dropped := p.metric(seriesDropped(tc.reason))
			offender := dial(t, p.url("ws", "/ws"), nil)
			oid, _ := offender.login()
			for _, c := range rc.clients {
				c.await("join of "+oid, isEvent("join", oid))
			}
			rc.chatRound(t, "before "+tc.name)
			offender.sendRaw(tc.kind, tc.data)
			if code := offender.awaitClose(); code != tc.code {
				t.Errorf("close code %d, want %d", code, tc.code)
			}
			// The others see the offender leave, with nothing of its frame
			// before that, and go on chatting.
			for _, c := range rc.clients {
				if f := c.next(); !isEvent("leave", oid)(f) {
					t.Errorf("%s: next frame is %v, want the offender's leave", c.name, f)
				}
			}
			rc.chatRound(t, "after "+tc.name)
			p.awaitMetric(seriesDropped(tc.reason), "one more drop", func(v float64) bool { return v == dropped+1 })
		})
	}
}

// TestRateLimit: messages over rate_limit get one rate_limited error frame
// per interval and are not relayed; the connection stays. The proof that
// the excess was not relayed is a marker: the sender handles its frames in
// order, so once it has the invalid_json error for a bad frame sent after
// the excess, everything it relayed is queued for the others; a third
// member's message sent then reaches the receiver right after the allowed
// messages.
func TestRateLimit(t *testing.T) {
	p := startCaddy(t, faultSite("rate_limit 3 1h", "room {query.room}"))
	for _, tc := range []struct {
		name  string
		frame func(i int) map[string]any
		match func(id string, i int) func(frame) bool
	}{
		{"chat", func(i int) map[string]any { return map[string]any{"msg": fmt.Sprintf("m%d", i)} },
			func(id string, i int) func(frame) bool { return isChat(id, fmt.Sprintf("m%d", i)) }},
		// Renames reach every member too; unlimited, they would flood a
		// room past the limit.
		{"rename", func(i int) map[string]any { return map[string]any{"nick": fmt.Sprintf("n%d", i)} },
			func(id string, i int) func(frame) bool {
				return func(f frame) bool { return isEvent("nick", id)(f) && f.str("nick") == fmt.Sprintf("n%d", i) }
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A room of its own: the leaves of the other case's
			// members must not come between a's frames.
			rc := joinRoom(t, p.url("ws", "/ws?room=limit-"+tc.name), 3)
			a, b, marker := rc.clients[0], rc.clients[1], rc.clients[2]
			aid := rc.ids[0]
			for i := range 5 {
				a.send(tc.frame(i))
			}
			a.sendRaw(websocket.TextMessage, []byte("not json"))
			if f := a.next(); f.str("error") != ErrCodeRateLimited || f.str("msg_source") != "server" || f.str("msg") == "" {
				t.Fatalf("a's frame after 5 frames is %v, want a rate_limited error frame", f)
			}
			// The second frame over the limit is dropped without a word:
			// one notice per interval.
			if f := a.next(); f.str("error") != ErrCodeInvalidJSON {
				t.Fatalf("a's next frame is %v, want the invalid_json error for the bad frame", f)
			}
			marker.send(map[string]any{"msg": "marker"})
			for i := range 3 {
				if f := b.next(); !tc.match(aid, i)(f) {
					t.Fatalf("b's frame %d is %v, want a's frame %d", i, f, i)
				}
			}
			if f := b.next(); !isChat(rc.ids[2], "marker")(f) {
				t.Fatalf("after the allowed frames b got %v, want the marker (the excess must not be relayed)", f)
			}
			// The connection stays: it still receives.
			b.send(map[string]any{"msg": "still there?"})
			a.await("b's message", isChat(rc.ids[1], "still there?"))
			for _, c := range rc.clients {
				_ = c.conn.Close()
			}
		})
	}
}

// TestRateLimitedBurstStays: a client that reads but bursts far past
// rate_limit is told once per interval and is never closed as a slow
// consumer for the server's replies to it (the protocol says the
// connection stays). Without coalescing, a burst of renames fills its send
// queue with rate_limited frames faster than they are written.
func TestRateLimitedBurstStays(t *testing.T) {
	p := startCaddy(t, faultSite("rate_limit 3 1h", "send_queue 16"))
	rc := joinRoom(t, p.url("ws", "/ws"), 2)
	a, b := rc.clients[0], rc.clients[1]
	const burst = 1000
	for i := range burst {
		a.send(map[string]any{"nick": fmt.Sprintf("n%d", i)})
	}
	a.sendRaw(websocket.TextMessage, []byte("not json"))
	notices := 0
	for {
		f := a.next()
		if f.str("error") == ErrCodeInvalidJSON {
			break
		}
		if f.str("error") == ErrCodeRateLimited {
			notices++
		}
	}
	if notices != 1 {
		t.Fatalf("a got %d rate_limited frames for a burst of %d renames over the limit, want 1 (one per interval)", notices, burst-3)
	}
	b.send(map[string]any{"msg": "still there?"})
	a.await("b's message", isChat(rc.ids[1], "still there?"))
	p.awaitMetric(seriesLimited, "the dropped renames counted", func(v float64) bool { return v == burst-3 })
}

// TestSlowConsumerClosed: a client that stops reading fills its send queue
// and is closed with 1008 and a reason, while a reading member receives
// every message of a busy sender in order.
func TestSlowConsumerClosed(t *testing.T) {
	p := startCaddy(t, faultSite("send_queue 32", "rate_limit 100000 1s", "max_message_size 64KiB"))
	rc := joinRoom(t, p.url("ws", "/ws"), 2)
	sender, reader := rc.clients[0], rc.clients[1]
	sid := rc.ids[0]

	// The slow client reads nothing, through a small receive buffer so
	// that the kernel holds little on its behalf.
	dialer := websocket.Dialer{
		HandshakeTimeout: waitLong,
		NetDialContext: (&net.Dialer{Control: func(_, _ string, raw syscall.RawConn) error {
			var serr error
			err := raw.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
			if err != nil {
				return err
			}
			return serr
		}}).DialContext,
	}
	slowConn, _, err := dialer.Dial(p.url("ws", "/ws"), nil)
	if err != nil {
		t.Fatalf("dial slow client: %v", err)
	}
	t.Cleanup(func() { _ = slowConn.Close() })
	slowJoin := sender.await("the slow client's join", func(f frame) bool { return f.str("event") == "join" })
	reader.await("the slow client's join", isEvent("join", slowJoin.str("id")))

	// The sender sends 16 KiB messages in batches of 16 until the server
	// gives up on the slow client, at most 2000 of them (32 MiB). The
	// reading member takes each batch, in order, before the next is sent:
	// it never has more than 16 frames waiting, so it never counts as
	// slow, however loaded the machine; the slow client's queue grows by
	// 16 a batch once the kernel's buffers are full.
	const maxMessages, batch = 2000, 16
	dropped := p.metric(seriesDropped(dropSlowConsumer))
	padding := strings.Repeat("p", 16<<10)
	sent := 0
	for sent < maxMessages {
		for range batch {
			sender.send(map[string]any{"msg": fmt.Sprintf("%d %s", sent, padding)})
			sent++
		}
		for i := sent - batch; i < sent; i++ {
			f := reader.await(fmt.Sprintf("message %d", i), func(f frame) bool { return f.str("from_id") == sid })
			if want := fmt.Sprintf("%d %s", i, padding); f.str("msg") != want {
				t.Fatalf("reader's message %d from the sender starts %.20q, want %.20q", i, f.str("msg"), want)
			}
		}
		if p.metric(seriesDropped(dropSlowConsumer)) > dropped {
			break
		}
	}
	if p.metric(seriesDropped(dropSlowConsumer)) == dropped {
		t.Fatalf("the slow client was not dropped after %d messages of 16 KiB", sent)
	}
	sender.send(map[string]any{"msg": "last"})
	reader.await("the sender's last message", isChat(sid, "last"))

	// The slow client now reads: whatever it was sent, then close 1008.
	slow := &wsClient{t: t, name: "slow client", conn: slowConn, frames: make(chan []byte, 4096), closed: make(chan struct{})}
	go slow.readLoop()
	if code := slow.awaitClose(); code != websocket.ClosePolicyViolation {
		t.Errorf("slow client: close code %d, want %d (policy violation)", code, websocket.ClosePolicyViolation)
	}
	t.Logf("slow client dropped after %d messages of 16 KiB", sent)
}

// TestSlowJoinerWithHistory: a joiner is sent its welcome, the online list
// and up to `history` messages at once; that burst must not count as a slow
// consumer even where history exceeds send_queue.
func TestSlowJoinerWithHistory(t *testing.T) {
	p := startCaddy(t, faultSite("history 20", "send_queue 4", "rate_limit 100000 1s"))
	rc := joinRoom(t, p.url("ws", "/ws"), 1)
	for i := range 20 {
		rc.clients[0].send(map[string]any{"msg": fmt.Sprintf("h%d", i)})
	}
	joiner := dial(t, p.url("ws", "/ws"), nil)
	joiner.login()
	for i := range 20 {
		if f := joiner.next(); !isChat(rc.ids[0], fmt.Sprintf("h%d", i))(f) {
			t.Fatalf("joiner's history frame %d is %v, want h%d", i, f, i)
		}
	}
	rc.clients[0].send(map[string]any{"msg": "live"})
	joiner.await("a live message after the history", isChat(rc.ids[0], "live"))
}

// TestMaxConnections: over max_connections the upgrade is answered 503 with
// a plain-text reason; a slot freed by a leaving client can be taken again,
// and plain HTTP requests are not limited.
func TestMaxConnections(t *testing.T) {
	p := startCaddy(t, faultSite("max_connections 2"))
	rc := joinRoom(t, p.url("ws", "/ws"), 2)

	c, resp, err := tryDial(t, p.url("ws", "/ws"), nil)
	if err == nil {
		_ = c.conn.Close()
		t.Fatal("a third connection was accepted with max_connections 2")
	}
	checkRefusal(t, resp, http.StatusServiceUnavailable, "")

	page, err := http.Get(p.url("http", "/"))
	if err != nil {
		t.Fatal(err)
	}
	page.Body.Close()
	if page.StatusCode != http.StatusOK {
		t.Fatalf("static page while chat is full: %s, want 200", page.Status)
	}

	// The room still works, and a freed slot is taken again.
	rc.chatRound(t, "full room")
	_ = rc.clients[1].conn.Close()
	rc.clients[0].await("the leave", isEvent("leave", rc.ids[1]))
	var again *wsClient
	deadline := time.Now().Add(waitLong)
	for again == nil {
		// The slot is released when the handler returns, just after the
		// leave is sent: retry briefly.
		if c, resp, err := tryDial(t, p.url("ws", "/ws"), nil); err == nil {
			again = c
		} else if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("reconnecting after a slot was freed: %v", err)
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	id, _ := again.login()
	rc.clients[0].await("the new member's join", isEvent("join", id))
}

// checkRefusal checks a refused upgrade: the status, a plain-text reason
// containing want, and no upgrade.
func checkRefusal(t *testing.T, resp *http.Response, status int, want string) {
	t.Helper()
	if resp == nil {
		t.Fatalf("no HTTP response, want %d", status)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %s (%q), want %d", resp.Status, body, status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want text/plain", ct)
	}
	if strings.TrimSpace(string(body)) == "" || !strings.Contains(string(body), want) {
		t.Errorf("body %q, want a reason containing %q", body, want)
	}
	if resp.Header.Get("Upgrade") != "" {
		t.Errorf("a refused request carries Upgrade: %q", resp.Header.Get("Upgrade"))
	}
}

// TestBadRoomName: a room name outside 1 to 64 characters of A-Z a-z 0-9
// . _ -, or a query string with a bad escape (room=%zz), is answered 400
// with a plain-text reason before the upgrade.
func TestBadRoomName(t *testing.T) {
	p := startCaddy(t, faultSite("room {query.room}"))
	for _, name := range []string{"a b", "a/b", "room!", strings.Repeat("r", 65), "caf\u00e9", "a\nb", "<script>"} {
		_, resp, err := tryDial(t, p.url("ws", "/ws?room="+url.QueryEscape(name)), nil)
		if err == nil {
			t.Errorf("room %q was accepted", name)
			continue
		}
		checkRefusal(t, resp, http.StatusBadRequest, "invalid room name")
	}
	// A query that does not parse is refused too, rather than read as if
	// the bad pair were missing (which joined lobby).
	for _, query := range []string{"room=%zz", "room=ok&x=%", "room=a%2"} {
		_, resp, err := tryDial(t, p.url("ws", "/ws?"+query), nil)
		if err == nil {
			t.Errorf("query %q was accepted", query)
			continue
		}
		checkRefusal(t, resp, http.StatusBadRequest, "malformed query string")
	}
	// The edges of the rule are accepted.
	for _, name := range []string{strings.Repeat("r", 64), "A-z_0.9", "x"} {
		c := dial(t, p.url("ws", "/ws?room="+url.QueryEscape(name)), nil)
		welcome := c.next()
		if welcome.str("room") != name {
			t.Errorf("room %q: welcome %v", name, welcome)
		}
	}
}

// TestOriginPolicy: without `origins` only the site's own origin (or none)
// may connect; with a list only those, compared with default ports filled
// in (a browser sends https://chat.example for a listed
// https://chat.example:443), "*." entries matching subdomains; with `*`
// any. Others get 403 before the upgrade.
func TestOriginPolicy(t *testing.T) {
	p := startCaddy(t, "\tchatroom /default\n\tchatroom /list {\n\t\torigins https://chat.example:443 http://other.example:8080 https://*.rooms.example\n\t}\n\tchatroom /any {\n\t\torigins *\n\t}\n\troot * {{root}}\n\tfile_server")
	self := fmt.Sprintf("http://127.0.0.1:%d", p.Port)
	cases := []struct {
		path, origin string
		allowed      bool
	}{
		{"/default", "", true},
		{"/default", self, true},
		{"/default", "http://evil.example", false},
		{"/default", fmt.Sprintf("http://127.0.0.1:%d", p.Port+1), false},
		{"/default", "null", false},
		{"/list", "https://chat.example", true},
		{"/list", "https://chat.example:443", true},
		{"/list", "https://a.rooms.example", true},
		{"/list", "https://a.b.rooms.example:443", true},
		{"/list", "https://rooms.example", false},
		{"/list", "https://evilrooms.example", false},
		{"/list", "http://a.rooms.example", false},
		{"/list", "https://a.rooms.example:8443", false},
		{"/list", "https://*.rooms.example", false},
		{"/list", "HTTPS://CHAT.EXAMPLE", true},
		{"/list", "http://other.example:8080", true},
		{"/list", "http://chat.example", false},
		{"/list", "http://other.example", false},
		{"/list", self, false},
		{"/list", "", true},
		{"/any", "http://evil.example", true},
		{"/any", "null", true},
	}
	for _, tc := range cases {
		header := http.Header{}
		if tc.origin != "" {
			header.Set("Origin", tc.origin)
		}
		c, resp, err := tryDial(t, p.url("ws", tc.path), header)
		switch {
		case tc.allowed && err != nil:
			status := ""
			if resp != nil {
				status = resp.Status
			}
			t.Errorf("%s with Origin %q: refused (%v %s), want allowed", tc.path, tc.origin, err, status)
		case tc.allowed:
			c.login()
			_ = c.conn.Close()
		case err == nil:
			_ = c.conn.Close()
			t.Errorf("%s with Origin %q: allowed, want 403", tc.path, tc.origin)
		default:
			t.Run(fmt.Sprintf("%s %s", tc.path, tc.origin), func(t *testing.T) {
				checkRefusal(t, resp, http.StatusForbidden, "not allowed")
			})
		}
	}
}

// TestDNSRebindingPin: on a catch-all site the default origin rule trusts
// Host, so a rebound attacker's page (Host and Origin both its own) passes,
// as the README's Security section says; `origins` pins the expected
// origin and refuses it, while the real origin, default port written or
// not, still passes.
func TestDNSRebindingPin(t *testing.T) {
	p := startCaddy(t, faultSite())
	catchAll := fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n}\n\nhttp://:%d {\n\tbind 127.0.0.1\n\tchatroom /ws\n\tchatroom /pinned {\n\t\torigins http://chat.example:80\n\t}\n}\n", p.Admin, p.Port)
	if err := p.c.Reload(catchAll); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path, host, origin string
		allowed            bool
	}{
		{"/ws", "evil.example", "http://evil.example", true}, // the documented hole
		{"/pinned", "evil.example", "http://evil.example", false},
		{"/pinned", "evil.example", "http://chat.example", true}, // Host plays no part once pinned
		{"/pinned", "chat.example", "http://chat.example", true},
	}
	for _, tc := range cases {
		header := http.Header{"Host": {tc.host}, "Origin": {tc.origin}}
		c, resp, err := tryDial(t, p.url("ws", tc.path), header)
		switch {
		case tc.allowed && err != nil:
			t.Errorf("%s with Host %q, Origin %q: refused (%v), want allowed", tc.path, tc.host, tc.origin, err)
		case tc.allowed:
			c.login()
			_ = c.conn.Close()
		case err == nil:
			_ = c.conn.Close()
			t.Errorf("%s with Host %q, Origin %q: allowed, want 403", tc.path, tc.host, tc.origin)
		default:
			checkRefusal(t, resp, http.StatusForbidden, "not allowed")
		}
	}
}
