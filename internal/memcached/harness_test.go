package memcached

// The test harness of this package: a recorder of what a backend delivers,
// a History in memory, and a started backend. memcached itself comes from
// internal/testenv, shared with the root package's tests.

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/testenv"
	"go.uber.org/zap/zaptest"
)

// waitLong bounds every wait on a backend or on memcached.
const waitLong = testenv.WaitLong

// recordingHost is a cluster.Host that keeps what it is delivered.
type recordingHost struct {
	mu     sync.Mutex // orders updates as the hub's room lock does
	events chan hostEvent
}

type hostEvent struct {
	room string
	ev   *chat.Event
}

func newRecordingHost() *recordingHost { return &recordingHost{events: make(chan hostEvent, 100000)} }

// DeliverWith implements cluster.Host.
func (h *recordingHost) DeliverWith(room string, update func() []*chat.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ev := range update() {
		h.events <- hostEvent{room, ev}
	}
}

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

// memHistory is a cluster.History in memory, as simple as can be.
type memHistory struct {
	mu   sync.Mutex
	keep int
	ev   map[string][]*chat.Event
	gaps map[string]bool
	seq  uint64 // the last seq stamped
}

func (m *memHistory) Publish(room string, ev *chat.Event) {
	if ev.Kind != chat.KindChat {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// Stamped as the real history stamps a local event: a history
	// written to memcached without seqs is dropped when read back.
	if ev.Seq == 0 {
		m.seq++
		ev.Seq = m.seq
	}
	if m.keep == 0 {
		return
	}
	l := append(m.ev[room], ev)
	if len(l) > m.keep {
		l = l[len(l)-m.keep:]
	}
	m.ev[room] = l
}

func (m *memHistory) History(room string, n int) []*chat.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.ev[room]
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return append([]*chat.Event(nil), l...)
}

func (m *memHistory) Replace(room string, events []*chat.Event, _ uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ev[room] = append([]*chat.Event(nil), events...)
}

func (m *memHistory) KeepHistory(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keep = max(m.keep, n)
}

func (m *memHistory) Since(room string, after uint64) ([]*chat.Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*chat.Event
	for _, ev := range m.ev[room] {
		if ev.Seq > after {
			out = append(out, ev)
		}
	}
	return out, !m.gaps[room]
}

func (m *memHistory) KeepWindow(time.Duration) {}

func (m *memHistory) Window() time.Duration { return DefaultResumeWindow }

func (m *memHistory) MarkGap(room string, _ uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gaps == nil {
		m.gaps = make(map[string]bool)
	}
	m.gaps[room] = true
}

func (m *memHistory) Kept() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.keep
}

// testBackend is a started backend with its recorder.
type testBackend struct {
	*Backend
	host *recordingHost
}

func newTestBackend(t testing.TB, addrs []string, prefix string, ttl time.Duration) *testBackend {
	t.Helper()
	b, err := New(Config{Servers: addrs, Prefix: prefix, TTL: ttl, MaxMessageSize: 8 << 10,
		History: &memHistory{ev: make(map[string][]*chat.Event)}}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	r := &testBackend{Backend: b, host: newRecordingHost()}
	if err := r.Start(r.host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// twoBackends starts a memcached and two backends sharing it under prefix,
// as two instances of a cluster.
func twoBackends(t testing.TB, prefix string, ttl time.Duration) (*testenv.TestMemcached, *testBackend, *testBackend) {
	t.Helper()
	mc := testenv.StartMemcached(t)
	return mc, newTestBackend(t, []string{mc.Addr}, prefix, ttl), newTestBackend(t, []string{mc.Addr}, prefix, ttl)
}

// join publishes a member joining room, as the hub does.
// pair starts a memcached and two backends on it with a member each in
// room r.
func pair(t *testing.T, prefix string, ttl time.Duration) (mc *testenv.TestMemcached, a, b *testBackend) {
	mc, a, b = twoBackends(t, prefix, ttl)
	a.join("r", "1", "ann")
	b.join("r", "2", "bob")
	b.host.await(t, "join of 1", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "1" })
	a.host.await(t, "join of 2", func(e hostEvent) bool { return e.ev.Kind == chat.KindJoin && e.ev.ID == "2" })
	return mc, a, b
}

func (r *testBackend) join(room, id, nick string) {
	r.Warm(context.Background(), room)
	r.Publish(room, &chat.Event{Kind: chat.KindJoin, ID: id, Nick: nick})
}

// flushed waits until the backend has written its outbox to memcached.
func (r *testBackend) flushed(t testing.TB) {
	t.Helper()
	testenv.AwaitCondition(t, "outbox written to memcached", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.outbox) == 0 && !r.writing
	})
}

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
}

func hasMember(members []chat.Member, id string) bool {
	for _, m := range members {
		if m.ID == id {
			return true
		}
	}
	return false
}

// drain returns what was delivered so far without waiting.
func (h *recordingHost) drain() []hostEvent {
	var out []hostEvent
	for {
		select {
		case e := <-h.events:
			out = append(out, e)
		default:
			return out
		}
	}
}
