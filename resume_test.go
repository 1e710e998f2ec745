package chatroom

// Integration tests of resume (README, "Resume"): seq on every chat frame,
// since on reconnect, the resumed frame; on one instance and across a
// memcached cluster.

import (
	"fmt"
	"strconv"
	"testing"
	"time"
)

// seqOf returns a chat frame's seq, failing the test when it is not a
// decimal number.
func seqOf(t *testing.T, f frame) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(f.str("seq"), 10, 64)
	if err != nil || n == 0 {
		t.Fatalf("chat frame %v: seq %q is not a positive decimal string", f, f.str("seq"))
	}
	return n
}

// replay reads what follows a resuming client's welcome and online frames:
// the chat frames up to the resumed frame, which it returns as well.
func (c *wsClient) replay(t *testing.T) ([]frame, frame) {
	t.Helper()
	var chats []frame
	for i := 0; i < 2000; i++ {
		f := c.next()
		if f.str("event") == "resumed" {
			return chats, f
		}
		if f.str("from_id") == "" {
			t.Fatalf("%s: frame %v before the resumed frame, want only chat frames", c.name, f)
		}
		chats = append(chats, f)
	}
	t.Fatalf("%s: no resumed frame after 2000 frames", c.name)
	return nil, nil
}

// checkResumed fails the test unless f is a resumed frame with missed and
// complete as given.
func checkResumed(t *testing.T, f frame, missed int, complete bool) {
	t.Helper()
	if f.str("msg_source") != "server" || f.str("msg") == "" || f.str("missed") != strconv.Itoa(missed) || f["complete"] != complete {
		t.Fatalf("resumed frame = %v, want missed %q and complete %v", f, strconv.Itoa(missed), complete)
	}
}

// checkMissed fails the test unless chats are the messages want from the
// member from, in order, with rising seqs above since.
func checkMissed(t *testing.T, chats []frame, from string, since uint64, want ...string) {
	t.Helper()
	if len(chats) != len(want) {
		t.Fatalf("replayed %d chat frames %v, want %d: %v", len(chats), chats, len(want), want)
	}
	last := since
	for i, f := range chats {
		if f.str("from_id") != from || f.str("msg") != want[i] || f.str("msg_time") == "" {
			t.Fatalf("replayed frame %d = %v, want %q from %s", i, f, want[i], from)
		}
		if s := seqOf(t, f); s <= last {
			t.Fatalf("replayed frame %d has seq %d, not above %d", i, s, last)
		} else {
			last = s
		}
	}
}

// say has from send msg and returns its seq as to receives it.
func say(t *testing.T, from *wsClient, fromID string, to *wsClient, msg string) uint64 {
	t.Helper()
	from.send(map[string]any{"msg": msg})
	return seqOf(t, to.await(msg, isChat(fromID, msg)))
}

// drop closes c's connection and waits until watcher sees c leave.
func drop(c *wsClient, id string, watcher *wsClient) {
	watcher.t.Helper()
	_ = c.conn.Close()
	watcher.await("leave of "+id, isEvent("leave", id))
}

// missedFromM0 sets the scene of a resume in the room at url: y and an
// observer stay, x gets y's m0 and drops. It returns y with its id, the
// observer, and m0's seq as x got it: the since that x resumes from.
func missedFromM0(t *testing.T, url string) (y *wsClient, yid string, obs *wsClient, s0 uint64) {
	t.Helper()
	y, yid = connect(t, url)
	obs, _ = connect(t, url)
	x, xid := connect(t, url)
	y.await("join of x", isEvent("join", xid))
	s0 = say(t, y, yid, x, "m0")
	drop(x, xid, y)
	return y, yid, obs, s0
}

// resumeAt connects to url, which carries since, and returns the client,
// the chat frames it replayed and its resumed frame.
func resumeAt(t *testing.T, url string) (*wsClient, []frame, frame) {
	t.Helper()
	c := dial(t, url, nil)
	c.login()
	chats, resumed := c.replay(t)
	return c, chats, resumed
}

// TestResumeAfterDisconnect: a client drops, another member sends five
// messages, and the client resumes with the seq of the last message it got:
// exactly those five, oldest first, then resumed (5, complete), in place of
// the history; live messages follow, none twice.
func TestResumeAfterDisconnect(t *testing.T) {
	p := startCaddy(t, chatSite("\t\thistory 2\n\t\troom {query.room}"))
	url := p.url("ws", "/ws?room=resume")
	y, yid, obs, s0 := missedFromM0(t, url)
	if f := obs.await("m0", isChat(yid, "m0")); seqOf(t, f) != s0 {
		t.Fatalf("members got m0 with seqs %d and %s: want one seq per message", s0, f.str("seq"))
	}
	want := []string{"m1", "m2", "m3", "m4", "m5"}
	for _, m := range want {
		y.send(map[string]any{"msg": m})
	}
	obs.await("m5", isChat(yid, "m5")) // the server has handled all five

	x2, chats, resumed := resumeAt(t, fmt.Sprintf("%s&since=%d", url, s0))
	checkMissed(t, chats, yid, s0, want...)
	checkResumed(t, resumed, 5, true)

	// Live frames follow the replay without repeating it.
	y.send(map[string]any{"msg": "live"})
	if f := x2.next(); f.str("msg") != "live" || seqOf(t, f) <= seqOf(t, chats[4]) {
		t.Fatalf("after the resume got %v, want the live message with a higher seq", f)
	}

	// Resuming from the newest seq: nothing missed, complete.
	_, chats, resumed = resumeAt(t, fmt.Sprintf("%s&since=%s", url, chats[4].str("seq")))
	if len(chats) != 1 || chats[0].str("msg") != "live" {
		t.Fatalf("resume from m5 replayed %v, want only the live message", chats)
	}
	checkResumed(t, resumed, 1, true)
}

// TestResumeOwnMessagesUnderOldID: the replay includes what the client
// itself said before the drop, under its old id, so that a page can skip
// what it shows already.
func TestResumeOwnMessagesUnderOldID(t *testing.T) {
	p := startCaddy(t, chatSite("\t\troom {query.room}"))
	url := p.url("ws", "/ws?room=own")
	y, yid := connect(t, url)
	x, xid := connect(t, url)
	y.await("join of x", isEvent("join", xid))
	s0 := say(t, y, yid, x, "from y")
	say(t, x, xid, y, "from x")
	drop(x, xid, y)

	x2 := dial(t, fmt.Sprintf("%s&since=%d", url, s0), nil)
	if id, _ := x2.login(); id == xid {
		t.Fatalf("the resumed connection got the old id %s again", id)
	}
	chats, resumed := x2.replay(t)
	checkMissed(t, chats, xid, s0, "from x")
	checkResumed(t, resumed, 1, true)
}

// TestResumeBadSince: a since that is not a decimal seq or is from the
// future gets the normal join with history and resumed (0, incomplete); one
// from before what is held gets what is held and resumed incomplete. The
// connection stays open either way.
func TestResumeBadSince(t *testing.T) {
	p := startCaddy(t, chatSite("\t\thistory 2\n\t\troom {query.room}"))
	url := p.url("ws", "/ws?room=bad")
	y, yid := connect(t, url)
	obs, _ := connect(t, url)
	said := []string{"h1", "h2", "h3"}
	for _, m := range said {
		y.send(map[string]any{"msg": m})
	}
	first := seqOf(t, obs.await("h1", isChat(yid, "h1")))
	obs.await("h3", isChat(yid, "h3"))

	future := uint64(time.Now().Add(time.Hour).UnixMicro())
	for _, since := range []string{"abc", "", "-1", "1e9", "18446744073709551616", strconv.FormatUint(future, 10)} {
		t.Run("since="+since, func(t *testing.T) {
			c, chats, resumed := resumeAt(t, url+"&since="+since)
			checkMissed(t, chats, yid, 0, said[len(said)-2:]...) // the history
			checkResumed(t, resumed, 0, false)
			// The connection is a member like any other.
			said = append(said, "still here "+since)
			y.send(map[string]any{"msg": said[len(said)-1]})
			c.await("a live message", isChat(yid, said[len(said)-1]))
		})
	}

	t.Run("too old", func(t *testing.T) {
		_, chats, resumed := resumeAt(t, fmt.Sprintf("%s&since=%d", url, first-1_000_000))
		checkMissed(t, chats, yid, 0, said...) // every message held
		checkResumed(t, resumed, len(said), false)
	})
}

// TestResumeAfterWindow: once resume_window has passed, what was said is
// no longer held (history 0 keeps nothing beyond the window): a resume from
// before it is told so; one from the newest seq is complete.
func TestResumeAfterWindow(t *testing.T) {
	p := startCaddy(t, chatSite("\t\tresume_window 1s\n\t\troom {query.room}"))
	url := p.url("ws", "/ws?room=window")
	y, yid, obs, s0 := missedFromM0(t, url)
	for i := 1; i <= 5; i++ {
		y.send(map[string]any{"msg": fmt.Sprintf("m%d", i)})
	}
	last := seqOf(t, obs.await("m5", isChat(yid, "m5")))

	// Resume until the window has passed: before, every message; after,
	// none and incomplete.
	deadline := time.Now().Add(waitLong)
	for attempt := 0; ; attempt++ {
		c, chats, resumed := resumeAt(t, fmt.Sprintf("%s&since=%d", url, s0))
		_ = c.conn.Close()
		if resumed["complete"] == false {
			checkResumed(t, resumed, 0, false)
			if len(chats) != 0 {
				t.Fatalf("incomplete resume after the window replayed %v, want nothing held", chats)
			}
			t.Logf("window passed after %d resumes", attempt+1)
			break
		}
		checkMissed(t, chats, yid, s0, "m1", "m2", "m3", "m4", "m5")
		if time.Now().After(deadline) {
			t.Fatalf("resumes still complete %v after the 1s resume_window", waitLong)
		}
		time.Sleep(100 * time.Millisecond) // polling the server's clock, not synchronising
	}

	_, chats, resumed := resumeAt(t, fmt.Sprintf("%s&since=%d", url, last))
	if len(chats) != 0 {
		t.Fatalf("resume from the newest seq replayed %v, want nothing", chats)
	}
	checkResumed(t, resumed, 0, true)
}

// TestClusterResumeOnOtherInstance: a client of one instance drops and
// resumes on the other, which gets the messages it missed from members of
// either instance.
func TestClusterResumeOnOtherInstance(t *testing.T) {
	_, p1, p2 := startTwoInstances(t, "")

	y, yid := connect(t, p1.url("ws", "/ws"))
	z, zid := connect(t, p2.url("ws", "/ws"))
	y.await("join of z from p2", isEvent("join", zid))
	x, xid := connect(t, p1.url("ws", "/ws"))
	z.await("join of x from p1", isEvent("join", xid))

	s0 := say(t, y, yid, x, "m0")
	if f := z.await("m0 on p2", isChat(yid, "m0")); seqOf(t, f) != s0 {
		t.Fatalf("m0 has seq %d on p1 and %s on p2: want one seq across the cluster", s0, f.str("seq"))
	}
	drop(x, xid, z)
	want := []string{"m1", "m2", "m3", "m4", "m5"}
	for _, m := range want {
		z.send(map[string]any{"msg": m})
	}
	y.await("m5 on p1", isChat(zid, "m5"))

	_, chats, resumed := resumeAt(t, fmt.Sprintf("%s?since=%d", p2.url("ws", "/ws"), s0))
	checkMissed(t, chats, zid, s0, want...)
	checkResumed(t, resumed, 5, true)

	// And back: p1 holds what p2 stamped, under the same seqs.
	_, chats3, resumed := resumeAt(t, fmt.Sprintf("%s?since=%s", p1.url("ws", "/ws"), chats[1].str("seq")))
	checkMissed(t, chats3, zid, seqOf(t, chats[1]), "m3", "m4", "m5")
	checkResumed(t, resumed, 3, true)
	for i, f := range chats3 {
		if f.str("seq") != chats[i+2].str("seq") {
			t.Fatalf("%s has seq %s on p1 and %s on p2", f.str("msg"), f.str("seq"), chats[i+2].str("seq"))
		}
	}
}

// TestClusterResumeAfterMemcachedRestart: what one instance said while
// memcached was away never reached the other, so a resume there from before
// the outage is told it may be incomplete, rather than claiming all.
func TestClusterResumeAfterMemcachedRestart(t *testing.T) {
	mc, p1, p2 := startTwoInstances(t, "")
	y, yid := connect(t, p1.url("ws", "/ws"))
	z, zid := connect(t, p2.url("ws", "/ws"))
	x, xid := connect(t, p1.url("ws", "/ws"))
	z.await("join of x from p1", isEvent("join", xid))
	s0 := say(t, y, yid, x, "m0")
	drop(x, xid, y)

	mc.Stop()
	z.send(map[string]any{"msg": "said while memcached was away"})
	mc.Start()
	crossesWithin(t, z, zid, y, "after restart")

	_, chats, resumed := resumeAt(t, fmt.Sprintf("%s?since=%d", p1.url("ws", "/ws"), s0))
	if resumed["complete"] != false {
		t.Fatalf("resume across a memcached outage replayed %v with %v, want complete false", chats, resumed)
	}
	for _, f := range chats {
		seqOf(t, f)
		if f.str("from_id") != zid {
			t.Fatalf("replayed %v, want only z's probes", f)
		}
	}
}

// TestSlowJoinerWithResume: a replay longer than send_queue is the joiner's
// burst, not slowness.
func TestSlowJoinerWithResume(t *testing.T) {
	p := startCaddy(t, chatSite("\t\tsend_queue 4\n\t\trate_limit 100000 1s\n\t\troom {query.room}"))
	url := p.url("ws", "/ws?room=burst")
	y, yid, obs, s0 := missedFromM0(t, url)
	const n = 50
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("b%d", i)
		y.send(map[string]any{"msg": want[i]})
		obs.await(want[i], isChat(yid, want[i])) // obs's queue is 4 frames too
	}

	x2, chats, resumed := resumeAt(t, fmt.Sprintf("%s&since=%d", url, s0))
	checkMissed(t, chats, yid, s0, want...)
	checkResumed(t, resumed, n, true)
	y.send(map[string]any{"msg": "live"})
	x2.await("a live message after the replay", isChat(yid, "live"))
}
