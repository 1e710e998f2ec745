package chatroom

import (
	"context"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// Registry-level tests of the memcached registry against a real memcached.
// The host side is a recorder of what the registry delivers: the hub's part
// is covered by the cluster tests with real Caddy processes.

// recordingHost is a Host that keeps what it is delivered.
type recordingHost struct {
	events chan hostEvent
}

type hostEvent struct {
	room string
	ev   *chat.Event
}

func newRecordingHost() *recordingHost { return &recordingHost{events: make(chan hostEvent, 10000)} }

// Deliver implements Host.
func (h *recordingHost) Deliver(room string, ev *chat.Event) { h.events <- hostEvent{room, ev} }

// LocalMembers implements Host.
func (h *recordingHost) LocalMembers() map[string][]chat.Member { return nil }

// await returns the first delivered event that match accepts, skipping
// others, and fails after waitLong.
func (h *recordingHost) await(t testing.TB, what string, match func(hostEvent) bool) hostEvent {
	t.Helper()
	deadline := time.After(waitLong)
	for {
		select {
		case e := <-h.events:
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s delivered within %v", what, waitLong)
		}
	}
}

// testRegistry is a started registry with its recorder.
type testRegistry struct {
	*memcachedRegistry
	host *recordingHost
}

func newTestRegistry(t testing.TB, addr, prefix string, ttl time.Duration) *testRegistry {
	t.Helper()
	reg, err := newMemcachedRegistry(memcachedConfig{Servers: []string{addr}, Prefix: prefix, TTL: ttl}, newMetrics(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	r := &testRegistry{memcachedRegistry: reg.(*memcachedRegistry), host: newRecordingHost()}
	if err := r.Start(r.host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// join publishes a member joining room, as the hub does.
func (r *testRegistry) join(room, id, nick string) {
	r.Warm(context.Background(), room)
	r.Publish(room, &chat.Event{Kind: chat.KindJoin, ID: id, Nick: nick})
}

// flushed waits until the registry has written its outbox to memcached:
// what another instance's joiner reads is there.
func (r *testRegistry) flushed(t testing.TB) {
	t.Helper()
	awaitCondition(t, "outbox written to memcached", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.outbox) == 0 && !r.writing
	})
}

func chatText(i int) string { return "message " + strconv.Itoa(i) }

func hasMember(members []chat.Member, id string) bool {
	for _, m := range members {
		if m.ID == id {
			return true
		}
	}
	return false
}

// awaitCondition polls cond until it holds: for state that has no event.
func awaitCondition(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitLong)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
}

func TestMemcachedIDsUniqueAcrossInstancesAndRestart(t *testing.T) {
	skipShort(t)
	mc := startMemcached(t)
	a := newTestRegistry(t, mc.Addr, "ids:", 30*time.Second)
	b := newTestRegistry(t, mc.Addr, "ids:", 30*time.Second)
	seen := make(map[string]string)
	var mu sync.Mutex
	take := func(phase string, r *testRegistry, n int) {
		for i := 0; i < n; i++ {
			id := r.NewID(context.Background())
			if _, err := strconv.ParseUint(id, 10, 64); err != nil {
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
	for _, r := range []*testRegistry{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); take("before restart", r, 100) }()
	}
	wg.Wait()
	// Connections stay live across the restart: their ids must not come
	// back, though the counter is gone.
	mc.stop()
	mc.start()
	for _, r := range []*testRegistry{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); take("after restart", r, 100) }()
	}
	wg.Wait()
	// While memcached is down, ids come from the fallback range.
	mc.stop()
	take("memcached down", a, 40)
	take("memcached down", b, 40)
	if len(seen) != 480 {
		t.Fatalf("%d distinct ids, want 480", len(seen))
	}
	fallback := 0
	for id := range seen {
		if v, _ := strconv.ParseUint(id, 10, 64); v >= fallbackIDBase {
			fallback++
		}
	}
	// What was left of each instance's block is used up first.
	if want := 80 - 2*(idBlock-1); fallback < want {
		t.Errorf("%d fallback ids, want at least %d of the 80 taken while memcached was down", fallback, want)
	}
}

func TestMemcachedRelaysEventsInOrder(t *testing.T) {
	skipShort(t)
	mc := startMemcached(t)
	a := newTestRegistry(t, mc.Addr, "relay:", 30*time.Second)
	b := newTestRegistry(t, mc.Addr, "relay:", 30*time.Second)
	b.join("r", "b1", "")
	a.join("r", "a1", "alice")
	b.host.await(t, "join of a1", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "a1" && e.ev.Nick == "alice" })

	a.join("other", "a2", "")
	const n = 200
	for i := 0; i < n; i++ {
		a.Publish("r", &chat.Event{Kind: chat.KindChat, ID: "a1", Msg: chatText(i), Time: "1"})
		a.Publish("other", &chat.Event{Kind: chat.KindChat, ID: "a2", Msg: "elsewhere", Time: "1"})
	}
	for i := 0; i < n; i++ {
		e := b.host.await(t, "chat "+strconv.Itoa(i), func(e hostEvent) bool { return e.ev.Kind == chat.KindChat })
		if e.room != "r" || e.ev.Msg != chatText(i) || e.ev.ID != "a1" {
			t.Fatalf("chat %d: got %q in room %q from %s, want %q in r from a1", i, e.ev.Msg, e.room, e.ev.ID, chatText(i))
		}
	}
	// Own events are never delivered back.
	b.Publish("r", &chat.Event{Kind: chat.KindChat, ID: "b1", Msg: "from b", Time: "1"})
	got := a.host.await(t, "chat from b", func(e hostEvent) bool { return e.ev.Kind == chat.KindChat })
	if got.ev.Msg != "from b" {
		t.Fatalf("a got %q, want the chat from b", got.ev.Msg)
	}
	select {
	case e := <-b.host.events:
		if e.ev.Kind == chat.KindChat {
			t.Fatalf("b was delivered a chat (%q) that it published itself or that belongs to another room", e.ev.Msg)
		}
	default:
	}
}

func TestMemcachedPresenceAcrossInstances(t *testing.T) {
	skipShort(t)
	mc := startMemcached(t)
	a := newTestRegistry(t, mc.Addr, "pres:", 30*time.Second)
	a.join("r", "a1", "alice")
	a.flushed(t)
	b := newTestRegistry(t, mc.Addr, "pres:", 30*time.Second)
	// A joiner on b sees a's member at once: Warm reads the snapshots.
	b.Warm(context.Background(), "r")
	if got := b.RemoteMembers("r"); len(got) != 1 || got[0] != (chat.Member{ID: "a1", Nick: "alice"}) {
		t.Fatalf("b's remote members of r = %v, want [a1 alice]", got)
	}
	b.Publish("r", &chat.Event{Kind: chat.KindJoin, ID: "b1"})
	a.host.await(t, "join of b1", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "b1" })
	if !hasMember(a.RemoteMembers("r"), "b1") {
		t.Fatalf("a's remote members of r = %v, want b1 in them", a.RemoteMembers("r"))
	}
	a.Publish("r", &chat.Event{Kind: chat.KindNick, ID: "a1", Nick: "alicia"})
	b.host.await(t, "nick of a1", func(e hostEvent) bool { return e.ev.Kind == chat.KindNick && e.ev.Nick == "alicia" })
	a.Publish("r", &chat.Event{Kind: chat.KindLeave, ID: "a1", Nick: "alicia"})
	b.host.await(t, "leave of a1", func(e hostEvent) bool { return e.ev.Kind == chat.KindLeave && e.ev.ID == "a1" })
	if got := b.RemoteMembers("r"); len(got) != 0 {
		t.Fatalf("b's remote members after the leave = %v, want none", got)
	}
	// The next snapshots must not announce the change a second time.
	awaitCondition(t, "two heartbeats", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		n := b.nodes[a.nodeID]
		return n != nil && n.snapGen >= 3
	})
	for {
		select {
		case e := <-b.host.events:
			if e.ev.ID == "a1" {
				t.Fatalf("b was told again about a1: %s", e.ev.Kind)
			}
			continue
		default:
		}
		break
	}
}

func TestMemcachedDeadInstanceLeaves(t *testing.T) {
	skipShort(t)
	mc := startMemcached(t)
	a := newTestRegistry(t, mc.Addr, "dead:", 2*time.Second)
	b := newTestRegistry(t, mc.Addr, "dead:", 2*time.Second)
	b.join("r", "b1", "")
	a.join("r", "a1", "")
	b.host.await(t, "join of a1", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "a1" })
	// a dies without a word: its loops stop, its keys stay until they
	// expire.
	a.cancel()
	a.wg.Wait()
	start := time.Now()
	b.host.await(t, "leave of a1", func(e hostEvent) bool { return e.ev.Kind == chat.KindLeave && e.ev.ID == "a1" })
	t.Logf("a's member left b's presence %v after a died (ttl 2s, heartbeat %v)", time.Since(start).Round(time.Millisecond), b.heartbeat)
	if hasMember(b.RemoteMembers("r"), "a1") {
		t.Fatal("a1 still in b's presence after its leave")
	}
}

func TestMemcachedHistoryClusterWide(t *testing.T) {
	skipShort(t)
	mc := startMemcached(t)
	a := newTestRegistry(t, mc.Addr, "hist:", 30*time.Second)
	a.KeepHistory(5)
	a.join("r", "a1", "")
	for i := 0; i < 8; i++ {
		a.Publish("r", &chat.Event{Kind: chat.KindChat, ID: "a1", Msg: chatText(i), Time: "1"})
		if i == 3 {
			a.Publish("r", &chat.Event{Kind: chat.KindJoin, ID: "a2"})
		}
	}
	b := newTestRegistry(t, mc.Addr, "hist:", 30*time.Second)
	b.KeepHistory(5)
	a.flushed(t)
	b.Warm(context.Background(), "r")
	got := b.History("r", 5)
	var texts []string
	for _, ev := range got {
		texts = append(texts, ev.Msg)
	}
	want := []string{chatText(3), chatText(4), chatText(5), chatText(6), chatText(7)}
	if strings.Join(texts, "|") != strings.Join(want, "|") {
		t.Fatalf("history on b = %q, want %q", texts, want)
	}
}

func TestMemcachedKeysAndClose(t *testing.T) {
	skipShort(t)
	mc := startMemcached(t)
	mc.set("foreign:key", "keep me", 0)
	mc.set("keys:unrelated", "not the module's either", 0)
	a := newTestRegistry(t, mc.Addr, "keys:", 30*time.Second)
	b := newTestRegistry(t, mc.Addr, "keys:", 30*time.Second)
	a.KeepHistory(3)
	a.join("r.1_x-Y", "1", "")
	a.Publish("r.1_x-Y", &chat.Event{Kind: chat.KindChat, ID: "1", Msg: "hi", Time: "1"})
	_ = a.NewID(context.Background())
	b.join("r.1_x-Y", "2", "")
	a.host.await(t, "join of 2", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "2" })
	awaitCondition(t, "both instances in the index", func() bool {
		idx := mc.get("keys:nodes")
		return strings.Contains(idx, a.nodeID) && strings.Contains(idx, b.nodeID)
	})

	pattern := func(k string) bool {
		switch {
		case k == "foreign:key", k == "keys:unrelated":
			return true
		case k == "keys:id", k == "keys:nodes", k == "keys:seq:r.1_x-Y":
			return true
		case k == "keys:node:"+a.nodeID, k == "keys:node:"+b.nodeID:
			return true
		case strings.HasPrefix(k, "keys:msg:r.1_x-Y:"):
			_, err := strconv.ParseUint(strings.TrimPrefix(k, "keys:msg:r.1_x-Y:"), 10, 64)
			return err == nil
		}
		return false
	}
	keys := mc.keys()
	for _, k := range keys {
		if !pattern(k) {
			t.Errorf("unexpected key %q (all keys: %q)", k, keys)
		}
	}
	if !mc.has("keys:node:" + a.nodeID) {
		t.Fatalf("no snapshot of a among %q", keys)
	}

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if mc.has("keys:node:" + a.nodeID) {
		t.Error("a's snapshot survived its Close")
	}
	if idx := mc.get("keys:nodes"); strings.Contains(idx, a.nodeID) || !strings.Contains(idx, b.nodeID) {
		t.Errorf("index after a's Close = %q, want b only", idx)
	}
	for _, k := range []string{"foreign:key", "keys:unrelated", "keys:node:" + b.nodeID, "keys:id", "keys:seq:r.1_x-Y"} {
		if !mc.has(k) {
			t.Errorf("%s did not survive a's Close", k)
		}
	}
	b.host.await(t, "leave of a's member", func(e hostEvent) bool { return e.ev.Kind == chat.KindLeave && e.ev.ID == "1" })
}

func TestMemcachedRoomKeyPart(t *testing.T) {
	for _, room := range []string{"lobby", "a.b_c-D", strings.Repeat("x", 64)} {
		if got := roomKeyPart(room); got != room {
			t.Errorf("roomKeyPart(%q) = %q, want it unchanged", room, got)
		}
	}
	for _, room := range []string{"", "with space", "new\nline", "a:b", strings.Repeat("x", 65), "ü"} {
		got := roomKeyPart(room)
		if !validKeyPart(got) || !strings.HasPrefix(got, "~") || len(got) > maxRoomKeyPart {
			t.Errorf("roomKeyPart(%q) = %q, want a short legal hash", room, got)
		}
	}
	long := keySchema{prefix: strings.Repeat("p", 100)}.msg(strings.Repeat("r", 64), ^uint64(0))
	if len(long) > 250 {
		t.Errorf("longest key is %d bytes, over memcached's 250", len(long))
	}
}

func TestMemcachedDownAtStartThenUp(t *testing.T) {
	skipShort(t)
	mc := startMemcached(t)
	mc.stop()
	a := newTestRegistry(t, mc.Addr, "late:", 3*time.Second)
	a.join("r", "a1", "")
	id := a.NewID(context.Background())
	if v, _ := strconv.ParseUint(id, 10, 64); v < fallbackIDBase {
		t.Fatalf("id while memcached is down = %s, want one from the fallback range", id)
	}
	a.Publish("r", &chat.Event{Kind: chat.KindChat, ID: "a1", Msg: "said while down", Time: "1"})
	if a.client.isUp() {
		t.Fatal("registry thinks memcached is up while it is stopped")
	}
	mc.start()
	b := newTestRegistry(t, mc.Addr, "late:", 3*time.Second)
	b.join("r", "b1", "")
	// a rejoins by itself: its presence, its held message, and new ones.
	awaitCondition(t, "a's member in b's presence", func() bool {
		b.Warm(context.Background(), "x") // refreshes presence, as a joiner would
		return hasMember(b.RemoteMembers("r"), "a1")
	})
	a.Publish("r", &chat.Event{Kind: chat.KindChat, ID: "a1", Msg: "said after", Time: "1"})
	b.host.await(t, "chat said after", func(e hostEvent) bool { return e.ev.Msg == "said after" })
	b.Publish("r", &chat.Event{Kind: chat.KindChat, ID: "b1", Msg: "back to a", Time: "1"})
	a.host.await(t, "chat from b", func(e hostEvent) bool { return e.ev.Msg == "back to a" })
	if id := a.NewID(context.Background()); id == "" || mustUint(t, id) >= fallbackIDBase {
		t.Errorf("id after memcached returned = %s, want one from the counter", id)
	}
}

func mustUint(t testing.TB, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return v
}

// get returns a key's value, or "" when it is missing.
func (m *memcachedProc) get(key string) string {
	m.t.Helper()
	lines, err := m.command("get " + key)
	if err != nil {
		m.t.Fatalf("memcached get %s: %v", key, err)
	}
	if len(lines) < 2 {
		return ""
	}
	return lines[1]
}

func TestMemcachedCloseStopsGoroutines(t *testing.T) {
	skipShort(t)
	mc := startMemcached(t)
	// A registry that is made and closed without a connection (what
	// `caddy validate` does) leaves no trace in memcached.
	reg, err := newMemcachedRegistry(memcachedConfig{Servers: []string{mc.Addr}, Prefix: "gr:", TTL: 3 * time.Second}, newMetrics(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	if keys := mc.keys(); len(keys) != 0 {
		t.Fatalf("a registry that never started wrote %q", keys)
	}

	before := runtime.NumGoroutine()
	for i := 0; i < 3; i++ {
		reg, err := newMemcachedRegistry(memcachedConfig{Servers: []string{mc.Addr}, Prefix: "gr:", TTL: 3 * time.Second}, newMetrics(), zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.Start(newRecordingHost()); err != nil {
			t.Fatal(err)
		}
		id := reg.NewID(context.Background())
		reg.Warm(context.Background(), "r")
		reg.Publish("r", &chat.Event{Kind: chat.KindJoin, ID: id})
		reg.Publish("r", &chat.Event{Kind: chat.KindChat, ID: id, Msg: "hi", Time: "1"})
		if err := reg.Close(); err != nil {
			t.Fatal(err)
		}
	}
	awaitCondition(t, "goroutines back to their number before the registries", func() bool {
		return runtime.NumGoroutine() <= before
	})
	for _, k := range mc.keys() {
		if strings.HasPrefix(k, "gr:node:") {
			t.Errorf("closed registry left its snapshot %s", k)
		}
	}
}
