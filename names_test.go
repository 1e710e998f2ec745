package chatroom

// Integration tests of who says what: the name rules, authenticated names
// apart from chosen nicks, the origin rule's scheme, rooms shared by
// handlers with the same registry, and a reload that moves one handler to
// another registry.

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// TestBadNicksRefused: look-alike, invisible and overlong names are refused
// with bad_nick and a reason, and nobody hears of them.
func TestBadNicksRefused(t *testing.T) {
	p := startCaddy(t, chatSite(""))
	a := dial(t, p.url("ws", "/ws"), nil)
	aid, _ := a.login()
	b := dial(t, p.url("ws", "/ws"), nil)
	b.login()
	a.await("join of b", func(f frame) bool { return f.str("event") == "join" })

	for name, want := range map[string]string{
		"evil\u202Eexe.txt":     "U+202E",
		"\u200B":                "U+200B",
		"\u200B\u200B\u200B":    "U+200B",
		"line\u2028break":       "U+2028",
		"para\u2029break":       "U+2029",
		strings.Repeat("x", 33): "at most 32",
		"bell\a":                "U+0007",
		"esc\x1b[31m":           "U+001B",
		"\u0301":                "visible",
	} {
		a.send(map[string]any{"nick": name})
		f := a.next()
		if f.str("error") != "bad_nick" || f.str("msg_source") != "server" || !strings.Contains(f.str("msg"), want) {
			t.Errorf("nick %q: got %v, want error bad_nick with a reason naming %q", name, f, want)
		}
	}
	// b heard none of them: the first frame after them is a's message.
	a.send(map[string]any{"msg": "still me"})
	if f := b.next(); !isChat(aid, "still me")(f) || f["from_nick"] != nil {
		t.Fatalf("b got %v, want a's message with no name", f)
	}
}

// TestUserNamesApartFromNicks: with `user` from a header, an authenticated
// "alice" and a client that chose the nick "alice" (no header, or a header
// that cleans to nothing) are told apart in every frame: only the
// authenticated one carries user / from_user.
func TestUserNamesApartFromNicks(t *testing.T) {
	p := startCaddy(t, chatSite("\t\tuser {http.request.header.X-User}"))
	observer := dial(t, p.url("ws", "/ws"), http.Header{"X-User": {"olga"}})
	oid, _ := observer.login()

	alice := dial(t, p.url("ws", "/ws"), http.Header{"X-User": {"alice"}})
	welcome := alice.next()
	if welcome.str("user") != "alice" || welcome.str("nick") != "alice" {
		t.Fatalf("alice's welcome %v, want user and nick alice", welcome)
	}
	aliceOnline := alice.next()
	aid := welcome.str("id")
	join := observer.await("join of alice", isEvent("join", aid))
	if join.str("user") != "alice" || join.str("nick") != "alice" || !strings.Contains(join.str("msg"), `user "alice"`) {
		t.Fatalf("join of alice %v, want user and nick alice, marked in msg", join)
	}
	if !onlineHas(aliceOnline, oid, "olga", "olga") {
		t.Fatalf("online %v, want olga as a user", aliceOnline)
	}

	// Two spoofers: no header at all, and a header of invisible characters.
	for i, header := range []http.Header{nil, {"X-User": {""}}} {
		s := dial(t, p.url("ws", "/ws"), header)
		sw := s.next()
		sid := sw.str("id")
		if _, ok := sw["user"]; ok {
			t.Fatalf("spoofer %d: welcome %v carries user", i, sw)
		}
		online := s.next()
		if !onlineHas(online, aid, "alice", "alice") {
			t.Fatalf("spoofer %d: online %v, want alice as a user", i, online)
		}
		if j := observer.await("join of spoofer", isEvent("join", sid)); j["user"] != nil || j["nick"] != nil {
			t.Fatalf("spoofer %d: join %v, want neither user nor nick", i, j)
		}
		// Not name-locked: it may choose a nick, even alice's name.
		s.send(map[string]any{"nick": "alice"})
		ev := observer.await("spoofer's nick", isEvent("nick", sid))
		if ev.str("nick") != "alice" || ev["user"] != nil || ev.str("msg") != sid+` is now "alice"` {
			t.Fatalf("spoofer %d: nick event %v, want nick alice without user", i, ev)
		}
		s.send(map[string]any{"msg": "I am alice"})
		f := observer.await("spoofer's message", isChat(sid, "I am alice"))
		if f.str("from_nick") != "alice" || f["from_user"] != nil {
			t.Fatalf("spoofer %d: chat %v, want from_nick alice and no from_user", i, f)
		}
		late := dial(t, p.url("ws", "/ws"), http.Header{"X-User": {"late"}})
		_, lateOnline := late.login()
		if !onlineHas(lateOnline, sid, "alice", "") || !onlineHas(lateOnline, aid, "alice", "alice") {
			t.Fatalf("spoofer %d: online %v, want %s as nick alice only and %s as user alice", i, lateOnline, sid, aid)
		}
		_ = late.conn.Close()
		_ = s.conn.Close()
		leave := observer.await("spoofer's leave", isEvent("leave", sid))
		if leave["user"] != nil {
			t.Fatalf("spoofer %d: leave %v carries user", i, leave)
		}
	}

	alice.send(map[string]any{"msg": "I am alice"})
	f := observer.await("alice's message", isChat(aid, "I am alice"))
	if f.str("from_user") != "alice" || f.str("from_nick") != "alice" {
		t.Fatalf("alice's chat %v, want from_user and from_nick alice", f)
	}
	alice.send(map[string]any{"nick": "bob"})
	if f := alice.await("an error frame", func(f frame) bool { return f.str("error") != "" }); f.str("error") != "nick_locked" {
		t.Fatalf("alice got %v, want nick_locked", f)
	}
}

// TestUserNamesNeverChanged: a `user` name that the name rules would
// change (characters dropped, normalised into another string, cut) is
// refused with 403 and a reason before the upgrade, so that no two user
// ids are ever shown as one verified name; a name the rules keep as it is
// passes unchanged.
func TestUserNamesNeverChanged(t *testing.T) {
	p := startCaddy(t, chatSite("\t\tuser {http.request.header.X-User}"))
	long := strings.Repeat("a", 32)
	for _, user := range []string{
		"alice\u200B", "ad\u00ADmin", "root\u202E", long + "-one", long + "-two",
		"Zoe\u0308", "\u200B\u2028", strings.Repeat("é", 33),
	} {
		c, resp, err := tryDial(t, p.url("ws", "/ws"), http.Header{"X-User": {user}})
		if err == nil {
			t.Errorf("user %+q: connected, welcome %v, want 403", user, c.next())
			continue
		}
		if resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("user %+q: %v (response %v), want 403", user, err, resp)
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if !strings.Contains(string(body), "cannot be a chat name") {
			t.Errorf("user %+q: 403 with %q, want the reason", user, body)
		}
	}
	for _, user := range []string{"admin", "bob@example.com", strings.Repeat("é", 32)} {
		c := dial(t, p.url("ws", "/ws"), http.Header{"X-User": {user}})
		if w := c.next(); w.str("user") != user {
			t.Errorf("user %q: welcome %v, want that user unchanged", user, w)
		}
		c.next() // online
		c.send(map[string]any{"nick": "x"})
		if f := c.await("nick refused", func(f frame) bool { return f.str("error") != "" }); f.str("error") != "nick_locked" {
			t.Errorf("user %q: nick change got %v, want nick_locked", user, f)
		}
	}
}

// onlineHas reports whether an online frame lists id with the given nick
// and user ("" for none).
func onlineHas(f frame, id, nick, user string) bool {
	list, _ := f["online"].([]any)
	for _, m := range list {
		e, _ := m.(map[string]any)
		if e["id"] == id {
			n, _ := e["nick"].(string)
			u, hasUser := e["user"].(string)
			return n == nick && u == user && (user != "" || !hasUser)
		}
	}
	return false
}

// TestOriginSchemeChecked: the default origin rule refuses the right host
// under any other scheme or port, and accepts the site's own origin.
func TestOriginSchemeChecked(t *testing.T) {
	p := startCaddy(t, chatSite(""))
	host := fmt.Sprintf("127.0.0.1:%d", p.Port)
	for _, origin := range []string{
		"https://" + host,
		"ws://" + host,
		"wss://" + host,
		"foo://" + host,
		fmt.Sprintf("http://127.0.0.1:%d", p.Port+1),
		"http://127.0.0.1",
		"http://localhost:" + fmt.Sprint(p.Port),
		"http://" + host + "/path",
	} {
		c, resp, err := tryDial(t, p.url("ws", "/ws"), http.Header{"Origin": {origin}})
		if err == nil {
			_ = c.conn.Close()
			t.Errorf("Origin %q: allowed, want 403", origin)
			continue
		}
		t.Run(origin, func(t *testing.T) { checkRefusal(t, resp, http.StatusForbidden, "not allowed") })
	}
	c := dial(t, p.url("ws", "/ws"), http.Header{"Origin": {"http://" + host}})
	c.login()
}

// TestHandlersShareRoomsByRegistry: handlers with the same registry
// settings share their rooms, whatever else differs; another prefix
// separates them.
func TestHandlersShareRoomsByRegistry(t *testing.T) {
	p := startCaddy(t, "\tchatroom /open {\n\t\torigins *\n\t}\n\tchatroom /authed {\n\t\tuser {http.request.header.X-User}\n\t}\n\tchatroom /apart {\n\t\tprefix apart:\n\t}\n\troot * {{root}}\n\tfile_server")
	open := dial(t, p.url("ws", "/open"), nil)
	oid, _ := open.login()
	authed := dial(t, p.url("ws", "/authed"), http.Header{"X-User": {"alice"}})
	aid, online := authed.login()
	if !onlineHas(online, oid, "", "") {
		t.Fatalf("online %v of /authed, want /open's member %s: same registry, same lobby", online, oid)
	}
	apart := dial(t, p.url("ws", "/apart"), nil)
	pid, apartOnline := apart.login()
	if ids := onlineIDs(apartOnline); len(ids) != 1 || ids[0] != pid {
		t.Fatalf("online %v of /apart, want only itself: another prefix is another registry", apartOnline)
	}
	open.send(map[string]any{"msg": "from the open handler"})
	authed.await("the open handler's message", isChat(oid, "from the open handler"))
	authed.send(map[string]any{"msg": "from the authed handler"})
	open.await("the authed handler's message", isChat(aid, "from the authed handler"))
	apart.send(map[string]any{"msg": "from apart"})
	// Frames arrive in order: the marker after "from apart" proves it
	// never came.
	authed.send(map[string]any{"msg": "marker"})
	f := open.await("marker", func(f frame) bool { return f.str("from_id") != "" })
	if !isChat(aid, "marker")(f) {
		t.Fatalf("/open got %v, want only the marker: /apart's room is another", f)
	}
}

// TestReloadMovesChangedHandlersClients: two handlers share the embedded
// registry; a reload gives one of them memcached. Its old clients are closed
// with 1001 (they would otherwise stay on the old registry, kept alive by
// the other handler, in a room its new clients never hear); the other
// handler's clients stay and keep chatting.
func TestReloadMovesChangedHandlersClients(t *testing.T) {
	mc := testenv.StartMemcached(t)
	body := func(stay, moved string) string {
		return fmt.Sprintf("\tchatroom /stay {\n%s\n\t}\n\tchatroom /move {\n%s\n\t}\n\troot * {{root}}\n\tfile_server", stay, moved)
	}
	p := startCaddy(t, body("", ""))
	s1 := dial(t, p.url("ws", "/stay"), nil)
	s1id, _ := s1.login()
	s2 := dial(t, p.url("ws", "/stay"), nil)
	s2id, _ := s2.login()
	m1 := dial(t, p.url("ws", "/move"), nil)
	m1id, online := m1.login()
	if ids := onlineIDs(online); !containsAll(ids, s1id, s2id, m1id) {
		t.Fatalf("online %v before the reload, want the three members of one lobby", online)
	}

	p.reload(body("", "\t\tmemcached "+mc.Addr))
	if code := m1.awaitClose(); code != websocket.CloseGoingAway {
		t.Fatalf("the moved handler's client closed with %d, want 1001", code)
	}
	// The staying handler's clients are untouched.
	s1.send(map[string]any{"msg": "still here"})
	s2.await("s1's message after the reload", isChat(s1id, "still here"))
	s1.await("m1's leave", isEvent("leave", m1id))

	// The moved client reconnects into the new registry, with a new client
	// of the same handler: one room, both in it, and none of the old one.
	m2 := dial(t, p.url("ws", "/move"), nil)
	m2id, _ := m2.login()
	m1 = dial(t, p.url("ws", "/move"), nil)
	m1id, online = m1.login()
	if ids := onlineIDs(online); len(ids) != 2 || !containsAll(ids, m1id, m2id) {
		t.Fatalf("online %v on the moved handler, want exactly %s and %s", online, m1id, m2id)
	}
	m1.send(map[string]any{"msg": "new registry"})
	m2.await("m1's message in the new registry", isChat(m1id, "new registry"))
	s2.send(map[string]any{"msg": "old registry"})
	s1.await("s2's message", isChat(s2id, "old registry"))

	// A reload that changes no registry setting keeps everyone: a new
	// directive shifts the routes, and /stay keeps more history.
	p.reload(body("\t\thistory 5", "\t\tmemcached "+mc.Addr) + "\n\theader X-Reloaded yes")
	m2.send(map[string]any{"msg": "after the second reload"})
	m1.await("m2's message after the second reload", isChat(m2id, "after the second reload"))
	s1.send(map[string]any{"msg": "stay after the second reload"})
	s2.await("s1's message after the second reload", isChat(s1id, "stay after the second reload"))
}
