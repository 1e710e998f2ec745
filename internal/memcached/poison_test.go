package memcached

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// Values written into a real memcached behind the backends' backs, as
// someone with write access to it could: each must leave the instances
// serving, and nothing they deliver may break the rules a client's own
// frames follow.

// forge appends value to room's relay partition as a new entry.
func forge(mc *testenv.TestMemcached, prefix, room, value string) {
	k := keySchema{prefix: prefix}
	p := partitionOf(room)
	mc.Set(k.entry(p, mc.Incr(k.partition(p), 1)), value, 60)
}

func forgedEntry(node, room string, gen uint64, ev chat.Event) string {
	b, _ := json.Marshal(logEntry{Node: node, Gen: gen, Room: room, Event: &ev})
	return string(b)
}

// crosses checks that chat still goes from a to b in room.
func crosses(t *testing.T, a, b *testBackend, room, from, text string) {
	t.Helper()
	a.Chat(room, chatEv(from, text))
	b.host.await(t, "chat "+text, func(e hostEvent) bool { return e.room == room && e.ev.Msg == text })
}

func TestPoisonedCounterAtMax(t *testing.T) {
	skipShort(t)
	mc, a, b := pair(t, "pc:", 30*time.Second)
	// The old design's poll loop never ended on this value (the counter
	// wraps) and grew memory until the process died.
	k := keySchema{prefix: "pc:"}
	mc.Set(k.partition(partitionOf("r")), "18446744073709551615", 0)
	for i := 0; i < 3; i++ {
		crosses(t, a, b, "r", "1", fmt.Sprintf("after max %d", i))
	}
	for _, v := range []string{"-5", "not a number", strings.Repeat("9", 30), "0"} {
		mc.Set(k.partition(partitionOf("r")), v, 0)
		crosses(t, a, b, "r", "1", "after "+v)
		crosses(t, b, a, "r", "2", "back after "+v)
	}
}

func TestPoisonedIndex(t *testing.T) {
	skipShort(t)
	mc, a, b := pair(t, "pi:", 2*time.Second)
	bad := strings.Repeat("x", 300)
	idx := mc.Get("pi:nodes")
	mc.Set("pi:nodes", idx+" "+bad+" ../etc \x01", 0)
	testenv.AwaitCondition(t, "the malformed ids dropped from the index", func() bool {
		v := mc.Get("pi:nodes")
		return !strings.Contains(v, bad) && !strings.Contains(v, "..") && strings.Contains(v, a.nodeID) && strings.Contains(v, b.nodeID)
	})
	crosses(t, a, b, "r", "1", "index cleaned")
	// A crashed instance's members still leave: its snapshot expires
	// within ttl (ttl/heartbeat heartbeats of b), and b needs two more
	// heartbeats to call it gone. Counted in b's heartbeats, not seconds.
	a.cancel()
	a.wg.Wait()
	start := b.beats.Load()
	b.host.await(t, "leave of 1", func(e hostEvent) bool { return e.ev.Kind == chat.KindLeave && e.ev.ID == "1" })
	limit := uint64(b.nodeTTL/b.heartbeat) + 4
	if beats := b.beats.Load() - start; beats > limit {
		t.Errorf("the crashed instance's member left after %d heartbeats of b, want at most %d", beats, limit)
	}
}

func TestForgedEntries(t *testing.T) {
	skipShort(t)
	mc, a, b := pair(t, "pf:", 30*time.Second)
	stranger := "fedcba9876543210"
	forged := []struct{ what, value string }{
		{"chat as b's own member", forgedEntry(a.nodeID, "r", 0, chat.Event{Kind: chat.KindChat, ID: "2", Nick: "bob", Msg: "I am bob", Time: "1"})},
		{"leave of a member the stranger does not have", forgedEntry(stranger, "r", 99, chat.Event{Kind: chat.KindLeave, ID: "1", Nick: "ann"})},
		{"leave of b's own member", forgedEntry(a.nodeID, "r", 1000, chat.Event{Kind: chat.KindLeave, ID: "2"})},
		{"join with control and format characters", forgedEntry(stranger, "r", 100, chat.Event{Kind: chat.KindJoin, ID: "77", Nick: "\u202eevil\u0007\u0000"})},
		{"join with a 20,000-character nick", forgedEntry(stranger, "r", 101, chat.Event{Kind: chat.KindJoin, ID: "78", Nick: strings.Repeat("n", 20000)})},
		{"chat over max_message_size", forgedEntry(stranger, "r", 0, chat.Event{Kind: chat.KindChat, ID: "79", Msg: strings.Repeat("m", 9000), Time: "1"})},
		{"unknown kind", forgedEntry(stranger, "r", 102, chat.Event{Kind: "system", ID: "80", Msg: "x"})},
		{"id that is not a number", forgedEntry(stranger, "r", 103, chat.Event{Kind: chat.KindJoin, ID: "admin", Nick: "x"})},
		{"seq out of range", forgedEntry(stranger, "r", 0, chat.Event{Kind: chat.KindChat, ID: "81", Msg: "x", Time: "1", Seq: 1 << 60})},
		{"room that is not a room name", forgedEntry(stranger, "r r", 104, chat.Event{Kind: chat.KindJoin, ID: "82", Nick: "x"})},
		{"not JSON", "\x00\xff{"},
	}
	for _, f := range forged {
		forge(mc, "pf:", "r", f.value)
	}
	// A marker after them: once it arrives, the forged entries were read.
	crosses(t, a, b, "r", "1", "marker")
	for _, e := range b.host.drain() {
		t.Errorf("b delivered a forged %s event: %+v", e.ev.Kind, *e.ev)
	}
	if ms := b.RemoteMembers("r"); len(ms) != 1 || ms[0].ID != "1" {
		t.Errorf("b's remote members = %v, want only 1", ms)
	}
	crosses(t, b, a, "r", "2", "still serving")
}

func TestPoisonedSnapshotAndHistory(t *testing.T) {
	skipShort(t)
	mc, a, b := pair(t, "ps:", 2*time.Second)
	a.KeepHistory(5)
	b.KeepHistory(5)
	k := keySchema{prefix: "ps:"}
	// A header promising more chunks than exist, and a chunk with a
	// forged member: the snapshot is ignored, a's members stay.
	mc.Set(k.node(a.nodeID), `{"gen":999999,"chunks":100000}`, 0)
	mc.Set(k.chunk(a.nodeID, 0), `{"gen":999999,"rooms":{"r":{"n":1,"m":[{"id":"1","nick":"\u0007"}]}}}`, 0)
	// A room history with a forged event.
	mc.Set(k.history("q"), `{"events":[{"kind":"chat","id":"1","msg":"`+strings.Repeat("x", 9000)+`"}]}`, 0)
	b.Warm(t.Context(), "q")
	if h := b.History("q", 5); len(h) != 0 {
		t.Errorf("history loaded from a forged value: %v", h)
	}
	crosses(t, a, b, "r", "1", "after poisoned presence")
	// a's own next heartbeat writes its true snapshot again.
	testenv.AwaitCondition(t, "a's header rewritten", func() bool { return !strings.Contains(mc.Get(k.node(a.nodeID)), "100000") })
	if !hasMember(b.RemoteMembers("r"), "1") {
		t.Errorf("b lost a's member after the poisoned snapshot: %v", b.RemoteMembers("r"))
	}
	for _, e := range b.host.drain() {
		if e.ev.ID == "1" && e.ev.Kind != chat.KindChat {
			t.Errorf("b delivered %s of 1 after the poisoned snapshot", e.ev.Kind)
		}
	}
}

// TestHistoryEntryWithoutSeqDropped: a room history in memcached whose
// middle event has no seq loads without it, the rest in order, and the
// dropped one is counted as a rejected history value: a resume could not
// name it, and a replay must not send a chat frame without one.
func TestHistoryEntryWithoutSeqDropped(t *testing.T) {
	skipShort(t)
	mc := testenv.StartMemcached(t)
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rejected"}, []string{"value"})
	b, err := New(Config{Servers: []string{mc.Addr}, Prefix: "ns:", TTL: 2 * time.Second, MaxMessageSize: 8 << 10,
		History: &memHistory{ev: make(map[string][]*chat.Event)}, Metrics: &Metrics{Rejected: rejected}}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	host := newRecordingHost()
	if err := b.Start(host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	b.KeepHistory(5)

	k := keySchema{prefix: "ns:"}
	mc.Set(k.history("q"), `{"events":[`+
		`{"kind":"chat","id":"1","msg":"first","seq":10},`+
		`{"kind":"chat","id":"1","msg":"no seq"},`+
		`{"kind":"chat","id":"1","msg":"third","seq":12}]}`, 0)
	b.Warm(t.Context(), "q")
	h := b.History("q", 5)
	if len(h) != 2 || h[0].Msg != "first" || h[0].Seq != 10 || h[1].Msg != "third" || h[1].Seq != 12 {
		t.Fatalf("history loaded = %v, want first (seq 10) and third (seq 12) only", h)
	}
	if got := counterValue(t, rejected, "history"); got != 1 {
		t.Fatalf("rejected history values = %v, want 1 (the event without a seq)", got)
	}
}

// counterValue reads the counter of vec with the given label value.
func counterValue(t *testing.T, vec *prometheus.CounterVec, label string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(vec); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
