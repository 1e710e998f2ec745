package memcached

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/testenv"
	"go.uber.org/zap/zaptest"
)

// Backend tests against a real memcached. The host side is a recorder of
// what the backend delivers: the hub's part is covered by the cluster tests
// with real Caddy processes in the root package.

func chatText(i int) string { return "message " + strconv.Itoa(i) }

func chatEv(id, text string) *chat.Event {
	return &chat.Event{Kind: chat.KindChat, ID: id, Msg: text, Time: "1"}
}

func TestIDsUniqueAcrossInstancesAndRestart(t *testing.T) {
	skipShort(t)
	mc, a, b := twoBackends(t, "ids:", 30*time.Second)
	seen := make(map[string]string)
	var mu sync.Mutex
	take := func(phase string, r *testBackend, n int) {
		for i := 0; i < n; i++ {
			id := r.NewID(context.Background())
			if !validID(id) {
				t.Errorf("%s: id %q is not a decimal number", phase, id)
			}
			mu.Lock()
			if prev, dup := seen[id]; dup {
				t.Errorf("%s: id %s handed out twice (first in %s)", phase, id, prev)
			}
			seen[id] = phase
			mu.Unlock()
		}
	}
	var wg sync.WaitGroup
	for _, r := range []*testBackend{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); take("before restart", r, 100) }()
	}
	wg.Wait()
	mc.Stop()
	mc.Start()
	for _, r := range []*testBackend{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); take("after restart", r, 100) }()
	}
	wg.Wait()
	mc.Stop()
	take("memcached down", a, 40)
	take("memcached down", b, 40)
	if len(seen) != 480 {
		t.Fatalf("%d distinct ids, want 480", len(seen))
	}
}

func TestNewIDHonoursContext(t *testing.T) {
	skipShort(t)
	// A joiner whose context has ended gets a fallback id at once: no
	// round trip, no lock held while one is in flight.
	mc := testenv.StartMemcached(t)
	a := newTestBackend(t, []string{mc.Addr}, "ctx:", 30*time.Second)
	mc.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	id := a.NewID(ctx)
	if v, err := strconv.ParseUint(id, 10, 64); err != nil || v < fallbackIDBase {
		t.Fatalf("id with a cancelled context = %q, want one from the fallback range without a round trip", id)
	}
}

func TestRelaysEventsInOrder(t *testing.T) {
	skipShort(t)
	_, a, b := twoBackends(t, "relay:", 30*time.Second)
	b.join("r", "2", "")
	a.join("r", "1", "alice")
	b.host.await(t, "join of 1", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "1" && e.ev.Nick == "alice" })

	a.join("other", "3", "")
	const n = 200
	for i := 0; i < n; i++ {
		a.Chat("r", chatEv("1", chatText(i)))
		a.Chat("other", chatEv("3", "elsewhere"))
	}
	for i := 0; i < n; i++ {
		e := b.host.await(t, "chat "+strconv.Itoa(i), func(e hostEvent) bool { return e.ev.Kind == chat.KindChat })
		if e.room != "r" || e.ev.Msg != chatText(i) || e.ev.ID != "1" {
			t.Fatalf("chat %d: got %q in room %q from %s, want %q in r from 1", i, e.ev.Msg, e.room, e.ev.ID, chatText(i))
		}
	}
	// Nothing is delivered twice, however long the room stays quiet:
	// a few polls later, a marker shows what came in between.
	b.awaitPolls(t, 5)
	a.Chat("r", chatEv("1", "marker"))
	b.host.await(t, "marker", func(e hostEvent) bool {
		if e.ev.Kind == chat.KindChat && e.ev.Msg != "marker" {
			t.Fatalf("b was delivered %q again", e.ev.Msg)
		}
		return e.ev.Msg == "marker"
	})
	b.Chat("r", chatEv("2", "from b"))
	got := a.host.await(t, "chat from b", func(e hostEvent) bool { return e.ev.Kind == chat.KindChat && e.ev.ID == "2" })
	if got.ev.Msg != "from b" {
		t.Fatalf("a got %q, want the chat from b", got.ev.Msg)
	}
	for _, e := range b.host.drain() {
		if e.ev.Kind == chat.KindChat && e.ev.ID != "2" {
			t.Fatalf("b was delivered a chat (%q) of another instance twice or of a room it does not host", e.ev.Msg)
		}
	}
}

// awaitPolls waits until r polled the partitions n more times.
func (r *testBackend) awaitPolls(t *testing.T, n uint64) {
	t.Helper()
	target := r.polls.Load() + n
	testenv.AwaitCondition(t, strconv.FormatUint(n, 10)+" polls", func() bool { return r.polls.Load() >= target })
}

func TestPresenceAcrossInstances(t *testing.T) {
	skipShort(t)
	mc := testenv.StartMemcached(t)
	a := newTestBackend(t, []string{mc.Addr}, "pres:", 3*time.Second)
	a.join("r", "1", "alice")
	a.flushed(t)
	b := newTestBackend(t, []string{mc.Addr}, "pres:", 3*time.Second)
	// b lists the members of rooms it has members in (others it counts).
	b.join("r", "2", "")
	testenv.AwaitCondition(t, "a's member in b's view", func() bool { return hasMember(b.RemoteMembers("r"), "1") })
	if got := b.RemoteMembers("r"); len(got) != 1 || got[0] != (chat.Member{ID: "1", Nick: "alice"}) {
		t.Fatalf("b's remote members of r = %v, want [1 alice]", got)
	}
	a.host.await(t, "join of 2", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "2" })
	a.Publish("r", &chat.Event{Kind: chat.KindNick, ID: "1", Nick: "alicia"})
	b.host.await(t, "nick of 1", func(e hostEvent) bool { return e.ev.Kind == chat.KindNick && e.ev.Nick == "alicia" })
	a.Publish("r", &chat.Event{Kind: chat.KindLeave, ID: "1", Nick: "alicia"})
	b.host.await(t, "leave of 1", func(e hostEvent) bool { return e.ev.Kind == chat.KindLeave && e.ev.ID == "1" })
	if got := b.RemoteMembers("r"); len(got) != 0 {
		t.Fatalf("b's remote members after the leave = %v, want none", got)
	}
	// The next snapshots must not announce the change a second time.
	gen := a.generation()
	testenv.AwaitCondition(t, "b read a's latest snapshot", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return !b.view.NeedsSnapshot(a.nodeID, gen)
	})
	for _, e := range b.host.drain() {
		if e.ev.ID == "1" {
			t.Fatalf("b was told again about 1: %s", e.ev.Kind)
		}
	}
}

func (r *testBackend) generation() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen
}

func TestDeadInstanceLeaves(t *testing.T) {
	skipShort(t)
	_, a, b := twoBackends(t, "dead:", 2*time.Second)
	b.join("r", "2", "")
	a.join("r", "1", "")
	b.host.await(t, "join of 1", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "1" })
	a.cancel()
	a.wg.Wait()
	b.host.await(t, "leave of 1", func(e hostEvent) bool { return e.ev.Kind == chat.KindLeave && e.ev.ID == "1" })
	if hasMember(b.RemoteMembers("r"), "1") {
		t.Fatal("1 still in b's presence after its leave")
	}
}

func TestHistoryClusterWide(t *testing.T) {
	skipShort(t)
	mc := testenv.StartMemcached(t)
	a := newTestBackend(t, []string{mc.Addr}, "hist:", 30*time.Second)
	a.KeepHistory(5)
	a.join("r", "1", "")
	for i := 0; i < 8; i++ {
		a.Chat("r", chatEv("1", chatText(i)))
		if i == 3 {
			a.Publish("r", &chat.Event{Kind: chat.KindJoin, ID: "4"})
		}
	}
	b := newTestBackend(t, []string{mc.Addr}, "hist:", 30*time.Second)
	b.KeepHistory(5)
	a.flushed(t)
	b.Warm(context.Background(), "r")
	var texts []string
	for _, ev := range b.History("r", 5) {
		texts = append(texts, ev.Msg)
	}
	want := []string{chatText(3), chatText(4), chatText(5), chatText(6), chatText(7)}
	if strings.Join(texts, "|") != strings.Join(want, "|") {
		t.Fatalf("history on b = %q, want %q", texts, want)
	}
}

func TestKeysAndClose(t *testing.T) {
	skipShort(t)
	mc := testenv.StartMemcached(t)
	mc.Set("foreign:key", "keep me", 0)
	mc.Set("keys:unrelated", "not the module's either", 0)
	a := newTestBackend(t, []string{mc.Addr}, "keys:", 30*time.Second)
	b := newTestBackend(t, []string{mc.Addr}, "keys:", 30*time.Second)
	a.KeepHistory(3)
	a.join("r.1_x-Y", "1", "")
	a.Chat("r.1_x-Y", chatEv("1", "hi"))
	_ = a.NewID(context.Background())
	b.join("r.1_x-Y", "2", "")
	a.host.await(t, "join of 2", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "2" })
	testenv.AwaitCondition(t, "both instances in the index", func() bool {
		idx := mc.Get("keys:nodes")
		return strings.Contains(idx, a.nodeID) && strings.Contains(idx, b.nodeID)
	})
	isNum := func(s string) bool { _, err := strconv.ParseUint(s, 10, 64); return err == nil }
	pattern := func(k string) bool {
		switch {
		case k == "foreign:key", k == "keys:unrelated", k == "keys:id", k == "keys:nodes", k == "keys:hist:r.1_x-Y", k == "keys:seq:r.1_x-Y":
			return true
		}
		f := strings.Split(k, ":")
		switch {
		case len(f) == 3 && f[1] == "log" || len(f) == 4 && f[1] == "log" && (isNum(f[3]) || f[3] == "base"):
			return isNum(f[2])
		case len(f) == 3 && f[1] == "node" || len(f) == 4 && f[1] == "node" && isNum(f[3]):
			return f[2] == a.nodeID || f[2] == b.nodeID
		}
		return false
	}
	keys := mc.Keys()
	for _, k := range keys {
		if !pattern(k) {
			t.Errorf("unexpected key %q (all keys: %q)", k, keys)
		}
	}
	if !mc.Has("keys:node:"+a.nodeID) || !mc.Has("keys:node:"+a.nodeID+":0") {
		t.Fatalf("no snapshot of a among %q", keys)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if mc.Has("keys:node:"+a.nodeID) || mc.Has("keys:node:"+a.nodeID+":0") {
		t.Error("a's snapshot survived its Close")
	}
	if idx := mc.Get("keys:nodes"); strings.Contains(idx, a.nodeID) || !strings.Contains(idx, b.nodeID) {
		t.Errorf("index after a's Close = %q, want b only", idx)
	}
	for _, k := range []string{"foreign:key", "keys:unrelated", "keys:node:" + b.nodeID, "keys:id"} {
		if !mc.Has(k) {
			t.Errorf("%s did not survive a's Close", k)
		}
	}
	b.host.await(t, "leave of a's member", func(e hostEvent) bool { return e.ev.Kind == chat.KindLeave && e.ev.ID == "1" })
}

func TestRoomKeyPart(t *testing.T) {
	for _, room := range []string{"lobby", "a.b_c-D", strings.Repeat("x", 64)} {
		if got := roomKeyPart(room); got != room {
			t.Errorf("roomKeyPart(%q) = %q, want it unchanged", room, got)
		}
	}
	for _, room := range []string{"", "with space", "new\nline", "a:b", strings.Repeat("x", 65), "ü"} {
		got := roomKeyPart(room)
		if !strings.HasPrefix(got, "~") || len(got) > maxRoomKeyPart || strings.ContainsAny(got, " \n\r\t") {
			t.Errorf("roomKeyPart(%q) = %q, want a short legal hash", room, got)
		}
	}
	k := keySchema{prefix: strings.Repeat("p", 100)}
	for _, long := range []string{k.history(strings.Repeat("r", 64)), k.entry(partitions-1, ^uint64(0)), k.chunk("0123456789abcdef", maxChunks)} {
		if len(long) > 250 {
			t.Errorf("key %q is %d bytes, over memcached's 250", long, len(long))
		}
	}
}

func TestDownAtStartThenUp(t *testing.T) {
	skipShort(t)
	mc := testenv.StartMemcached(t)
	mc.Stop()
	a := newTestBackend(t, []string{mc.Addr}, "late:", 3*time.Second)
	a.join("r", "1", "")
	id := a.NewID(context.Background())
	if v, _ := strconv.ParseUint(id, 10, 64); v < fallbackIDBase {
		t.Fatalf("id while memcached is down = %s, want one from the fallback range", id)
	}
	a.Chat("r", chatEv("1", "said while down"))
	if a.client.up() {
		t.Fatal("backend thinks memcached is up while it is stopped")
	}
	mc.Start()
	b := newTestBackend(t, []string{mc.Addr}, "late:", 3*time.Second)
	b.join("r", "2", "")
	// a rejoins by itself: its presence, and new messages both ways.
	testenv.AwaitCondition(t, "a's member in b's presence", func() bool { return hasMember(b.RemoteMembers("r"), "1") })
	testenv.AwaitCondition(t, "b's member in a's presence", func() bool { return hasMember(a.RemoteMembers("r"), "2") })
	a.Chat("r", chatEv("1", "said after"))
	b.host.await(t, "chat said after", func(e hostEvent) bool { return e.ev.Msg == "said after" })
	b.Chat("r", chatEv("2", "back to a"))
	a.host.await(t, "chat from b", func(e hostEvent) bool { return e.ev.Msg == "back to a" })
	if id := a.NewID(context.Background()); id == "" || !validID(id) {
		t.Errorf("id after memcached returned = %q", id)
	}
}

func TestCloseStopsGoroutines(t *testing.T) {
	skipShort(t)
	mc := testenv.StartMemcached(t)
	cfg := func() Config {
		return Config{Servers: []string{mc.Addr}, Prefix: "gr:", TTL: 3 * time.Second, MaxMessageSize: 1024,
			History: &memHistory{ev: make(map[string][]*chat.Event)}}
	}
	reg, err := New(cfg(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	if keys := mc.Keys(); len(keys) != 0 {
		t.Fatalf("a backend that never started wrote %q", keys)
	}
	before := runtime.NumGoroutine()
	for i := 0; i < 3; i++ {
		reg, err := New(cfg(), zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.Start(newRecordingHost()); err != nil {
			t.Fatal(err)
		}
		id := reg.NewID(context.Background())
		reg.Warm(context.Background(), "r")
		reg.Publish("r", &chat.Event{Kind: chat.KindJoin, ID: id})
		reg.Chat("r", chatEv(id, "hi"))
		if err := reg.Close(); err != nil {
			t.Fatal(err)
		}
	}
	testenv.AwaitCondition(t, "goroutines back to their number before the backends", func() bool {
		return runtime.NumGoroutine() <= before
	})
	for _, k := range mc.Keys() {
		if strings.HasPrefix(k, "gr:node:") {
			t.Errorf("closed backend left its snapshot %s", k)
		}
	}
}

// TestReadsPastOwnBurst: an instance that publishes more than a poll's
// worth of entries (maxPerPoll) into one partition still reads what
// another instance publishes after them. Its poller used to stop at a
// window made only of its own entries, which it wants from nobody: from
// then on it read nothing of that partition (a room of 1,000 members on
// each of two instances heard nothing from the other one).
func TestReadsPastOwnBurst(t *testing.T) {
	skipShort(t)
	_, a, b := pair(t, "burst:", 30*time.Second)
	for i := 0; i < 3*maxPerPoll; i++ {
		a.Chat("r", chatEv("1", chatText(i)))
	}
	a.flushed(t)
	b.Chat("r", chatEv("2", "after the burst"))
	a.host.await(t, "b's chat after a's burst", func(e hostEvent) bool {
		return e.ev.Kind == chat.KindChat && e.ev.Msg == "after the burst"
	})
}

// TestRelayWaitsForAnEntryInFlight: a number is reserved before its entry
// is written, so a poll can find an entry missing and the next one there
// (the writer set both between the reader's gets). The later entry must
// not be delivered before the missing one: that would reorder one
// sender's messages.
func TestRelayWaitsForAnEntryInFlight(t *testing.T) {
	skipShort(t)
	mc, a, b := pair(t, "inflight:", 30*time.Second)
	k := keySchema{prefix: "inflight:"}
	p := partitionOf("r")
	seq := mc.Incr(k.seq("r"), 3) - 3 // the room's seqs of the three messages
	say := func(text string, i uint64) string {
		return forgedEntry(a.nodeID, "r", 0, chat.Event{Kind: chat.KindChat, ID: "1", Nick: "ann", Msg: text, Time: "1", Seq: seq + i})
	}
	last := mc.Incr(k.partition(p), 3) // three numbers reserved at once, as publishBatch does
	mc.Set(k.entry(p, last-2), say("one", 1), 60)
	mc.Set(k.entry(p, last), say("three", 3), 60)
	got := b.host.await(t, "the first message", func(e hostEvent) bool { return e.ev.Kind == chat.KindChat })
	if got.ev.Msg != "one" {
		t.Fatalf("b was delivered %q first, want one", got.ev.Msg)
	}
	b.awaitPolls(t, 3) // the reader has seen "two" missing and "three" there
	mc.Set(k.entry(p, last-1), say("two", 2), 60)
	for _, want := range []string{"two", "three"} {
		got := b.host.await(t, "message "+want, func(e hostEvent) bool { return e.ev.Kind == chat.KindChat })
		if got.ev.Msg != want {
			t.Fatalf("b was delivered %q, want %q: the relay reordered a sender's messages", got.ev.Msg, want)
		}
	}
}

// TestSeqNeverWrittenIsGivenUp: a writer that takes a room's seq and dies
// before relaying the message leaves a hole in the room's order. Every
// instance waits for it at most cluster.GapWait, then delivers what came
// after, and marks the history so that a resume across it is incomplete.
func TestSeqNeverWrittenIsGivenUp(t *testing.T) {
	skipShort(t)
	mc, a, b := pair(t, "hole:", 30*time.Second)
	k := keySchema{prefix: "hole:"}
	mc.Incr(k.seq("r"), 1) // taken, never relayed
	a.Chat("r", chatEv("1", "after the hole"))
	for _, r := range []*testBackend{a, b} {
		got := r.host.await(t, "the message after the hole", func(e hostEvent) bool { return e.ev.Kind == chat.KindChat })
		if got.ev.Msg != "after the hole" {
			t.Fatalf("delivered %q, want the message after the hole", got.ev.Msg)
		}
		h := r.hist.(*memHistory)
		h.mu.Lock()
		gap := h.gaps["r"]
		h.mu.Unlock()
		if !gap {
			t.Fatal("the hole was given up without marking the room's history")
		}
	}
}
