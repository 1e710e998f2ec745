package memcached

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/cluster"
	"github.com/caddy-chatroom/chatroom/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
)

// forgedChunks encodes rooms as chunks of at most maxChunkBytes, as a
// forger filling them to the brim would.
func forgedChunks(t testing.TB, gen uint64, names []string, rooms map[string]wireRoom) []string {
	t.Helper()
	var out []string
	var buf bytes.Buffer
	open := func() { buf.Reset(); fmt.Fprintf(&buf, `{"gen":%d,"rooms":{`, gen) }
	open()
	n := 0
	for _, name := range names {
		body, err := json.Marshal(rooms[name])
		if err != nil {
			t.Fatal(err)
		}
		entry := strconv.Quote(name) + ":" + string(body)
		if n > 0 && buf.Len()+len(entry)+3 > maxChunkBytes {
			buf.WriteString("}}")
			out = append(out, buf.String())
			open()
			n = 0
		}
		if n > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(entry)
		n++
	}
	buf.WriteString("}}")
	return append(out, buf.String())
}

// rssMB is this process's resident set, from /proc (0 where there is
// none).
func rssMB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestWorstSnapshotsTheCapsAllow writes into memcached the worst presence
// the caps allow (cluster.MaxNodeRooms, MaxNodeMembers, MaxRooms,
// MaxMembers): forged instances, each with the most rooms one snapshot may
// have, under the longest names, and in the rooms the reader follows the
// most members listed, with the longest ids and names, until the view's
// totals are reached; then one more forged instance. The reader takes the
// first ones, keeps its phantom rooms as counts, rejects the last one as a
// whole and counts it. The heap the view then holds is logged: the figure
// the README's limits give. Before, one forged instance of 882,816 rooms
// took a reader from 49 to 281 MB.
func TestWorstSnapshotsTheCapsAllow(t *testing.T) {
	skipShort(t)
	mc := testenv.StartMemcached(t)
	const prefix = "caps:"
	k := keySchema{prefix: prefix}
	metrics := &Metrics{Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rejected"}, []string{"value"})}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.Rejected)
	rejectedSnapshots := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetValue() == "snapshot" {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return 0
	}
	b, err := New(Config{Servers: []string{mc.Addr}, Prefix: prefix, TTL: 3 * time.Second, MaxMessageSize: 8 << 10,
		History: &memHistory{ev: make(map[string][]*chat.Event)}, Metrics: metrics}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	r := &testBackend{Backend: b, host: newRecordingHost()}
	if err := r.Start(r.host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })

	nodes := cluster.MaxRooms / cluster.MaxNodeRooms
	listCap := r.view.ListCap
	// The rooms the reader follows, listed full by every forged
	// instance, within the view's total of listed members.
	followed := cluster.MaxMembers / (nodes * listCap)
	for i := 0; i < followed; i++ {
		r.join(fmt.Sprintf("f%d", i), "9"+strconv.Itoa(i), "")
	}
	long := strings.Repeat("字", 32) // 96 bytes: the longest name
	before, rssBefore := heapInUse(), rssMB()

	// One forged instance at a time, its chunks deleted once read (the
	// reader does not read them again while the header's generation
	// stays), so that memcached holds them all.
	var ids []string
	// The rooms of a snapshot are applied in name order after it is
	// read: the last phantom room's count tells that all were.
	lastPhantom := fmt.Sprintf("%s%08d", strings.Repeat("p", 56), cluster.MaxNodeRooms-1)
	read := func(id string, chunks int) {
		t.Helper()
		mc.Set(k.nodeIndex(), strings.Join(append([]string{r.nodeID}, append(ids, id)...), " "), 0)
		want := len(ids) + 1
		testenv.AwaitCondition(t, "forged instance "+id+" read", func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return !r.view.NeedsSnapshot(id, 1) && (want > nodes || r.view.Count(lastPhantom) == want)
		})
		for i := 0; i < chunks; i++ {
			if _, err := mc.Command("delete " + k.chunk(id, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	forge := func(n int) {
		id := fmt.Sprintf("%016x", 0xf0000000+n)
		names := make([]string, 0, cluster.MaxNodeRooms)
		rooms := make(map[string]wireRoom, cluster.MaxNodeRooms)
		for i := 0; i < followed; i++ {
			wr := wireRoom{N: cluster.MaxRoomCount}
			for m := 0; m < listCap; m++ {
				wr.M = append(wr.M, chat.Member{ID: fmt.Sprintf("1%03d%05d%010d", n, i, m), Nick: long, User: long})
			}
			name := fmt.Sprintf("f%d", i)
			names = append(names, name)
			rooms[name] = wr
		}
		for i := len(names); i < cluster.MaxNodeRooms; i++ {
			name := fmt.Sprintf("%s%08d", strings.Repeat("p", 56), i)
			names = append(names, name)
			rooms[name] = wireRoom{N: 1, M: []chat.Member{{ID: fmt.Sprintf("2%03d%015d", n, i), Nick: long, User: long}}}
		}
		chunks := forgedChunks(t, 1, names, rooms)
		if len(chunks) > maxChunks {
			t.Fatalf("the forged snapshot needs %d chunks, more than the %d a header may have", len(chunks), maxChunks)
		}
		for i, c := range chunks {
			mc.Set(k.chunk(id, i), c, 0)
		}
		mc.Set(k.node(id), fmt.Sprintf(`{"gen":1,"chunks":%d}`, len(chunks)), 0)
		read(id, len(chunks))
		ids = append(ids, id)
	}
	for n := 0; n < nodes; n++ {
		forge(n)
	}
	if got := rejectedSnapshots(); got != 0 {
		t.Fatalf("%v snapshots within the caps rejected", got)
	}
	r.mu.Lock()
	phantom := r.view.Count(strings.Repeat("p", 56) + fmt.Sprintf("%08d", followed)) // one member on each
	listed := len(r.view.Members("f0"))
	unlisted := len(r.view.Members(strings.Repeat("p", 56) + fmt.Sprintf("%08d", followed)))
	r.mu.Unlock()
	if phantom != nodes || unlisted != 0 {
		t.Errorf("a phantom room: count %d, %d listed; want %d counted, none listed", phantom, unlisted, nodes)
	}
	if listed != nodes*listCap {
		t.Errorf("a followed room lists %d members, want %d", listed, nodes*listCap)
	}
	after, rssAfter := heapInUse(), rssMB()
	t.Logf("view of %d instances × %d rooms (%d followed, %d members listed): heap %.1f MB → %.1f MB (+%.1f MB), RSS %.0f MB → %.0f MB",
		nodes, cluster.MaxNodeRooms, followed, followed*nodes*listCap, float64(before)/1e6, float64(after)/1e6, (float64(after)-float64(before))/1e6, rssBefore, rssAfter)

	// One more: past the view's totals, rejected as a whole and counted.
	forge(nodes)
	if got := rejectedSnapshots(); got != 1 {
		t.Errorf("%v snapshots counted as rejected, want the one past the totals", got)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if got := r.view.Count("f0"); got != nodes*cluster.MaxRoomCount {
		t.Errorf("count of f0 %d after the rejected snapshot, want %d: it changed the view", got, nodes*cluster.MaxRoomCount)
	}
}

// TestJoinerListsAPhantomRoom: an instance keeps a room it has no member
// in as a count only; Warm, for a joiner on its way, fetches the lists of
// the instances there, so that the joiner's online list has them at once.
func TestJoinerListsAPhantomRoom(t *testing.T) {
	skipShort(t)
	mc := testenv.StartMemcached(t)
	a := newTestBackend(t, []string{mc.Addr}, "ph:", 3*time.Second)
	a.join("r", "1", "alice")
	a.flushed(t)
	b := newTestBackend(t, []string{mc.Addr}, "ph:", 3*time.Second)
	gen := a.generation()
	testenv.AwaitCondition(t, "a's snapshot with its member read by b", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return !b.view.NeedsSnapshot(a.nodeID, gen) && b.view.Count("r") == 1
	})
	if got := b.RemoteMembers("r"); len(got) != 0 {
		t.Fatalf("b lists %v in a room it has no member in, want a count only", got)
	}
	b.Warm(t.Context(), "r")
	if got := b.RemoteMembers("r"); len(got) != 1 || got[0] != (chat.Member{ID: "1", Nick: "alice"}) {
		t.Fatalf("b's remote members of r right after Warm = %v, want [1 alice]", got)
	}
}

// TestJoinerListsAPhantomRoomWhoseChunkIsGone: when the chunk that listed
// a counted room cannot be read for a joiner (here deleted), the instance's
// whole snapshot is read again at the next heartbeat although its
// generation did not move, and the room's members are listed then.
func TestJoinerListsAPhantomRoomWhoseChunkIsGone(t *testing.T) {
	skipShort(t)
	mc := testenv.StartMemcached(t)
	a := newTestBackend(t, []string{mc.Addr}, "pg:", 3*time.Second)
	a.join("r", "1", "alice")
	a.flushed(t)
	b := newTestBackend(t, []string{mc.Addr}, "pg:", 3*time.Second)
	gen := a.generation()
	testenv.AwaitCondition(t, "a's snapshot with its member read by b", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return !b.view.NeedsSnapshot(a.nodeID, gen) && b.view.Count("r") == 1
	})
	k := keySchema{prefix: "pg:"}
	if _, err := mc.Command("delete " + k.chunk(a.nodeID, 0)); err != nil {
		t.Fatal(err)
	}
	b.join("r", "2", "bob")
	if got := b.RemoteMembers("r"); len(got) != 0 {
		t.Fatalf("b lists %v from a chunk that is gone", got)
	}
	// a writes its chunk again (its touch missed it); b reads it whole.
	testenv.AwaitCondition(t, "a's member listed on b", func() bool { return hasMember(b.RemoteMembers("r"), "1") })
}
