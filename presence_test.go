package chatroom

// Tests of big rooms (presence_limit, max_rooms) and of join storms, each
// against a real Caddy with real WebSocket clients.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/testenv"
	"github.com/gorilla/websocket"
)

// isCount matches a count frame, or one with the given count when n > 0.
func isCount(n int) func(frame) bool {
	return func(f frame) bool {
		return f.str("event") == "count" && (n <= 0 || f.str("count") == strconv.Itoa(n))
	}
}

// noPresenceEvents wraps a matcher so that a join, leave or nick event seen
// while waiting fails the test: a big room sends none.
func noPresenceEvents(t *testing.T, who string, match func(frame) bool) func(frame) bool {
	return func(f frame) bool {
		switch f.str("event") {
		case "join", "leave", "nick":
			t.Errorf("%s got a %s event in a big room: %v", who, f.str("event"), f)
		}
		return match(f)
	}
}

// TestOnlineFrameUnderAndOverLimit: up to presence_limit members a joiner
// gets the whole list without a count; past it, the count and at most
// presence_limit members, and the members get a count frame instead of join
// events.
func TestOnlineFrameUnderAndOverLimit(t *testing.T) {
	p := startCaddy(t, faultSite("presence_limit 3"))
	url := p.url("ws", "/ws")
	rc := joinRoom(t, url, 2)

	third := dial(t, url, nil)
	thirdID, online := third.login()
	if ids := onlineIDs(online); len(ids) != 3 || ids[2] != thirdID {
		t.Errorf("third joiner's online list %v, want the 3 members ending with %s", ids, thirdID)
	}
	if _, ok := online["count"]; ok {
		t.Errorf("online frame of a room within presence_limit carries a count: %v", online)
	}
	rc.clients[0].await("the third member's join", isEvent("join", thirdID))

	for n := 4; n <= 5; n++ {
		c := dial(t, url, nil)
		_, online := c.login()
		if online.str("count") != strconv.Itoa(n) || online.str("msg") != fmt.Sprintf("%d online", n) {
			t.Errorf("joiner %d's online frame %v, want count %q and msg %q", n, online, strconv.Itoa(n), fmt.Sprintf("%d online", n))
		}
		if ids := onlineIDs(online); len(ids) > 3 || len(ids) == 0 {
			t.Errorf("joiner %d's online frame lists %d members, want 1 to 3 (presence_limit)", n, len(ids))
		}
	}
	f := rc.clients[0].await("the count 5", noPresenceEvents(t, "first member", isCount(5)))
	if f.str("msg") != "5 online" || f.str("msg_source") != "server" {
		t.Errorf("count frame %v, want msg \"5 online\" from the server", f)
	}
}

// TestCountEventsCoalesced: while a big room churns, its members get at
// most one count frame a second, and the last one tells the true count.
func TestCountEventsCoalesced(t *testing.T) {
	p := startCaddy(t, faultSite("presence_limit 2"))
	url := p.url("ws", "/ws")
	rc := joinRoom(t, url, 2)
	reader := rc.clients[0]
	third := dial(t, url, nil)
	third.login()
	reader.await("the count 3", isCount(3))

	// 60 clients join and leave, two at a time, over about three seconds;
	// then one more stays, so that the count ends at 4.
	start := time.Now()
	const churners = 60
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range churners / 2 {
				c, _, err := websocket.DefaultDialer.Dial(url, nil)
				if err != nil {
					t.Errorf("churner %d.%d: %v", w, i, err)
					return
				}
				_, _, _ = c.ReadMessage() // the welcome: it has joined
				time.Sleep(100 * time.Millisecond)
				_ = c.Close()
			}
		}()
	}
	wg.Wait()
	stayer := dial(t, url, nil)
	stayer.login()

	// Count frames until the room's true count (4) arrives.
	frames, last := 0, ""
	var lastAt time.Time
	deadline := time.After(waitLong)
	for last != "4" {
		select {
		case data := <-reader.frames:
			f := frameOf(t, data)
			switch f.str("event") {
			case "count":
				frames++
				last, lastAt = f.str("count"), time.Now()
			case "join", "leave":
				t.Fatalf("reader got a %s event in a big room: %v", f.str("event"), f)
			}
		case <-reader.closed:
			t.Fatalf("reader closed: %v", reader.err)
		case <-deadline:
			t.Fatalf("no count of 4 within %v; last count %q", waitLong, last)
		}
	}
	window := lastAt.Sub(start)
	// One a second at most: n frames take at least n-1 seconds on the
	// server; one more allows for delivery jitter.
	if allowed := int(window/countInterval) + 2; frames > allowed {
		t.Errorf("%d count frames in %v of churn, want at most %d (one a second)", frames, window, allowed)
	}
	if frames < 2 {
		t.Errorf("%d count frames while %d clients joined and left over %v, want one a second", frames, churners, window)
	}
	t.Logf("%d joins and leaves made %d count frames in %v", churners, frames, window.Round(time.Millisecond))
}

// frameOf decodes a server frame.
func frameOf(t *testing.T, data []byte) frame {
	t.Helper()
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("frame is not a JSON object: %q", data)
	}
	return f
}

// TestCrossingPresenceLimit: a room growing past presence_limit sends its
// members a count instead of the join; shrinking back, a fresh online list,
// after which they get join and leave events again.
func TestCrossingPresenceLimit(t *testing.T) {
	p := startCaddy(t, faultSite("presence_limit 2"))
	url := p.url("ws", "/ws")
	rc := joinRoom(t, url, 2) // a sees b's join: a small room
	a, b := rc.clients[0], rc.clients[1]

	c := dial(t, url, nil)
	cID, _ := c.login()
	a.await("the count 3", noPresenceEvents(t, "a", isCount(3)))

	_ = c.conn.Close()
	online := a.await("a fresh online list", noPresenceEvents(t, "a", func(f frame) bool { return f.str("event") == "online" }))
	if _, ok := online["count"]; ok {
		t.Errorf("online list after shrinking carries a count: %v", online)
	}
	ids := onlineIDs(online)
	if len(ids) != 2 || ids[0] != rc.ids[0] || ids[1] != rc.ids[1] {
		t.Errorf("online list after %s left: %v, want %v", cID, ids, rc.ids)
	}

	// Small again: events.
	b.send(map[string]any{"nick": "bob"})
	a.await("b's rename", func(f frame) bool {
		return f.str("event") == "nick" && f.str("id") == rc.ids[1] && f.str("nick") == "bob"
	})
	_ = b.conn.Close()
	a.await("b's leave", isEvent("leave", rc.ids[1]))
}

// TestMaxRooms: a join that would open one room more than max_rooms is
// answered 503 before the upgrade; joins to open rooms still pass, and a
// room that empties frees its slot.
func TestMaxRooms(t *testing.T) {
	p := startCaddy(t, faultSite("room {query.room}", "max_rooms 2"))
	roomURL := func(name string) string { return p.url("ws", "/ws?room="+name) }
	r1 := dial(t, roomURL("r1"), nil)
	r1.login()
	r2 := dial(t, roomURL("r2"), nil)
	r2.login()

	c, resp, err := tryDial(t, roomURL("r3"), nil)
	if err == nil {
		_ = c.conn.Close()
		t.Fatal("a third room was opened with max_rooms 2")
	}
	checkRefusal(t, resp, http.StatusServiceUnavailable, "rooms")
	if got := p.metric("caddy_chatroom_rooms_open"); got != 2 {
		t.Errorf("rooms_open = %v, want 2", got)
	}

	again := dial(t, roomURL("r1"), nil)
	againID, _ := again.login()
	r1.await("the second r1 member's join", isEvent("join", againID))

	_ = r2.conn.Close()
	deadline := time.Now().Add(waitLong)
	for {
		// The room closes when its last member's leave is done, just
		// after the close reaches us: retry briefly.
		c, resp, err := tryDial(t, roomURL("r3"), nil)
		if err == nil {
			c.login()
			break
		}
		if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("opening r3 after r2 emptied: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestJoinStormKeepsReader: while 240 clients join and leave, a member that
// keeps reading, with send_queue 8, is never closed and gets every chat
// message, in a room with full presence and in a big one.
func TestJoinStormKeepsReader(t *testing.T) {
	for _, limit := range []int{1000, 10} {
		t.Run(fmt.Sprintf("presence_limit %d", limit), func(t *testing.T) {
			p := startCaddy(t, faultSite("send_queue 8", "rate_limit 100000 1s", fmt.Sprintf("presence_limit %d", limit)))
			url := p.url("ws", "/ws")
			rc := joinRoom(t, url, 2)
			sender, reader := rc.clients[0], rc.clients[1]
			sid := rc.ids[0]

			const workers, rounds = 8, 30
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range rounds {
						c, _, err := websocket.DefaultDialer.Dial(url, nil)
						if err != nil {
							t.Errorf("storm client %d.%d: %v", w, i, err)
							return
						}
						_, _, _ = c.ReadMessage() // the welcome: it has joined
						_ = c.Close()
					}
				}()
			}
			go func() { wg.Wait(); close(stop) }()

			// The sender chats through the storm, at most 4 messages ahead
			// of the reader: chat alone never fills the reader's queue.
			const window, maxMessages = 4, 5000
			sent, stormOver := 0, false
			for sent < maxMessages && !(stormOver && sent >= 50) {
				sender.send(map[string]any{"msg": fmt.Sprintf("m%d", sent)})
				sent++
				if sent > window {
					i := sent - window - 1
					reader.await(fmt.Sprintf("message m%d", i), isChat(sid, fmt.Sprintf("m%d", i)))
				}
				select {
				case <-stop:
					stormOver = true
				default:
				}
			}
			for i := max(sent-window, 0); i < sent; i++ {
				reader.await(fmt.Sprintf("message m%d", i), isChat(sid, fmt.Sprintf("m%d", i)))
			}
			if !stormOver {
				t.Fatalf("the storm did not end within %d messages", maxMessages)
			}
			t.Logf("the reader got all %d messages sent during the storm", sent)
			// Both are still connected: await fails on a closed connection.
			// (Storm clients, which stop reading after the welcome, may be
			// closed as slow consumers: that is the send queue at work.)
			sender.send(map[string]any{"msg": "after"})
			reader.await("the message after the storm", isChat(sid, "after"))
		})
	}
}

// TestBigRoomAcrossCluster: presence_limit counts members on every
// instance; members on both instances converge to the true count, and back
// within the limit to the whole list.
func TestBigRoomAcrossCluster(t *testing.T) {
	mc := testenv.StartMemcached(t)
	p1 := startCaddyCluster(t, "presence_limit 2", mc.Addr)
	p2 := startCaddyCluster(t, "presence_limit 2", mc.Addr)

	rc := joinRoom(t, p1.url("ws", "/ws"), 2)
	a := rc.clients[0]
	c := dial(t, p2.url("ws", "/ws"), nil)
	cID, _ := c.login()
	a.await("the count 3 after a join on the other instance", isCount(3))

	d := dial(t, p2.url("ws", "/ws"), nil)
	d.login()
	a.await("the count 4", isCount(4))
	c.await("the count 4 on the other instance", isCount(4))

	_ = d.conn.Close()
	c.await("the count 3 on the other instance", isCount(3))
	_ = c.conn.Close()
	online := a.await("a fresh online list", func(f frame) bool { return f.str("event") == "online" })
	if ids := onlineIDs(online); len(ids) != 2 || !containsAll(ids, rc.ids...) {
		t.Errorf("online list after %s left the other instance: %v, want %v", cID, ids, rc.ids)
	}
}

// TestBigOnlineMessage: the online frame built by hand for big rooms is the
// one the frame type encodes.
func TestBigOnlineMessage(t *testing.T) {
	for _, list := range [][]chat.Member{{}, {{ID: "1"}, {ID: "7", Nick: "ann \"<b>\"", User: "ann"}}} {
		got := bigOnlineMessage(mustMarshal(list), 1234)
		want := mustMarshal(onlineFrame{Msg: "1234 online", MsgSource: sourceServer, Event: "online", Online: list, Count: "1234"})
		if string(got) != string(want) {
			t.Errorf("bigOnlineMessage = %s, want %s", got, want)
		}
	}
}
