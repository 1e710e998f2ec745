package chatroom

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// forgedNode is the node id the snapshot tests forge presence under.
const forgedNode = "0123456789abcdef"

// seriesRejected names the rejected-values counter of one kind of value.
func seriesRejected(value string) string {
	return fmt.Sprintf("caddy_chatroom_memcached_values_rejected_total{value=%q}", value)
}

// forgeInstance writes a forged instance into memcached under the default
// prefix: its header (generation gen, one chunk per value of chunks), its
// chunks, and its entry in the index of instances. The index already
// lists the instance under test (it has a member), which therefore leaves
// it as it is.
func forgeInstance(t *testing.T, mc *testenv.TestMemcached, gen int, chunks []string) {
	t.Helper()
	const prefix = "chatroom:"
	for i, c := range chunks {
		mc.Set(fmt.Sprintf("%snode:%s:%d", prefix, forgedNode, i), c, 0)
	}
	mc.Set(prefix+"node:"+forgedNode, fmt.Sprintf(`{"gen":%d,"chunks":%d}`, gen, len(chunks)), 0)
	index := mc.Get(prefix + "nodes")
	if !strings.Contains(index, forgedNode) {
		mc.Set(prefix+"nodes", strings.TrimSpace(index+" "+forgedNode), 0)
	}
}

// TestClusterSnapshotCannotSpeakForALocalMember: a forged instance's
// snapshot lists a member of the reading instance under another nick, in a
// room it claims 10,000,000 members of. The entry is dropped and counted
// as a forged relay entry is; the next joiner's online list shows the
// member once, with its real nick, and the room's size as the list bears
// it out (no count beyond a list that is not full). Before, the list
// showed the member twice (once as the forger named it) and the room as
// one of 10,000,002.
func TestClusterSnapshotCannotSpeakForALocalMember(t *testing.T) {
	mc := testenv.StartMemcached(t)
	p := startCaddyCluster(t, "ttl 3s", mc.Addr)
	a, aid := connect(t, p.url("ws", "/ws"))
	a.send(map[string]any{"nick": "alice"}) // handled long before b joins: forging takes heartbeats

	// Beside the forged entry, one about a member of its own (77777): its
	// join told to a shows that the snapshot was read (or, where the
	// count is believed, the room's count past presence_limit).
	forgeInstance(t, mc, 1, []string{
		fmt.Sprintf(`{"gen":1,"rooms":{"lobby":{"n":10000000,"m":[{"id":%q,"nick":"mallory"},{"id":"77777","nick":"zed"}]}}}`, aid),
	})
	a.await("the forged instance's member joining", func(f frame) bool {
		return f.str("event") == "join" && f.str("id") == "77777" || f.str("event") == "count"
	})
	if got := p.metrics()[seriesRejected("snapshot")]; got != 1 {
		t.Errorf("%v snapshot entries counted as rejected, want the 1 about a local member", got)
	}

	b := dial(t, p.url("ws", "/ws"), nil)
	bid, online := b.login()
	seen := 0
	for _, m := range online["online"].([]any) {
		obj, _ := m.(map[string]any)
		if obj["id"] == aid {
			seen++
			if obj["nick"] != "alice" {
				t.Errorf("the local member is listed as %v, want its own nick alice", obj["nick"])
			}
		}
	}
	if seen != 1 {
		t.Errorf("the local member %s is listed %d times in %v, want once", aid, seen, online)
	}
	if ids := onlineIDs(online); len(ids) != 3 || !containsAll(ids, aid, bid, "77777") {
		t.Errorf("online list %v, want exactly %s, %s and 77777", ids, aid, bid)
	}
	if c, ok := online["count"]; ok {
		t.Errorf("online frame has count %v: the room has 3 members, far under presence_limit", c)
	}
}

// TestClusterOversizeSnapshotRejected: a forged instance publishes one
// room more than a snapshot may hold (cluster.MaxNodeRooms), each with a
// member. The reader rejects the snapshot as a whole and counts it: the
// member the forger lists in the joiner's room does not appear. Then the
// forger publishes a snapshot within the caps, whose rooms the reader has
// no member in but one: that room's member is listed for a joiner there,
// the others only counted. Before, every room of a snapshot of any size
// (up to 64 chunks of 256 KB) got a full view.
func TestClusterOversizeSnapshotRejected(t *testing.T) {
	mc := testenv.StartMemcached(t)
	p := startCaddyCluster(t, "ttl 3s", mc.Addr)
	a, _ := connect(t, p.url("ws", "/ws"))

	snapshot := func(gen, rooms int) []string {
		var chunks []string
		var b strings.Builder
		for i := 0; i < rooms; i++ {
			if b.Len() == 0 {
				fmt.Fprintf(&b, `{"gen":%d,"rooms":{`, gen)
			} else {
				b.WriteByte(',')
			}
			room := fmt.Sprintf("r%06d", i)
			if i == 0 {
				room = "lobby"
			}
			fmt.Fprintf(&b, `%q:{"n":1,"m":[{"id":"7%06d","nick":"n%d"}]}`, room, i, i)
			if b.Len() > 200<<10 || i == rooms-1 {
				b.WriteString("}}")
				chunks = append(chunks, b.String())
				b.Reset()
			}
		}
		return chunks
	}
	forgeInstance(t, mc, 1, snapshot(1, 10_001))
	testenv.AwaitCondition(t, "the oversize snapshot rejected", func() bool { return p.metrics()[seriesRejected("snapshot")] >= 1 })
	b := dial(t, p.url("ws", "/ws"), nil)
	if _, online := b.login(); containsAll(onlineIDs(online), "7000000") {
		t.Errorf("a member of a rejected snapshot is listed: %v", onlineIDs(online))
	}

	// Within the caps: taken, lobby listed (it has members here).
	forgeInstance(t, mc, 2, snapshot(2, 10_000))
	a.await("the forged member of lobby joining", func(f frame) bool { return f.str("event") == "join" && f.str("id") == "7000000" })
	c := dial(t, p.url("ws", "/ws?room=r000005"), nil)
	if _, online := c.login(); !containsAll(onlineIDs(online), "7000005") {
		t.Errorf("a joiner in a room known as a count only does not see its member: %v", onlineIDs(online))
	}
	if got := p.metrics()[seriesRejected("snapshot")]; got != 1 {
		t.Errorf("%v snapshots rejected, want the oversize one only", got)
	}
}

// remote_presence lowers the caps of what an instance keeps of the others'
// presence: a forged snapshot within the defaults but beyond the
// operator's caps is rejected as a whole and counted, one within them is
// taken.
func TestClusterRemotePresenceCaps(t *testing.T) {
	mc := testenv.StartMemcached(t)
	p := startCaddyCluster(t, "ttl 3s\n\t\tremote_presence 50 20", mc.Addr)
	a, _ := connect(t, p.url("ws", "/ws"))
	snapshot := func(gen, rooms int) []string {
		var b strings.Builder
		fmt.Fprintf(&b, `{"gen":%d,"rooms":{`, gen)
		for i := 0; i < rooms; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			room := fmt.Sprintf("c%03d", i)
			if i == 0 {
				room = "lobby"
			}
			fmt.Fprintf(&b, `%q:{"n":1,"m":[{"id":"8%06d","nick":"n%d"}]}`, room, i, i)
		}
		b.WriteString("}}")
		return []string{b.String()}
	}
	forgeInstance(t, mc, 1, snapshot(1, 51))
	testenv.AwaitCondition(t, "the snapshot beyond remote_presence rejected", func() bool { return p.metrics()[seriesRejected("snapshot")] >= 1 })
	forgeInstance(t, mc, 2, snapshot(2, 50))
	a.await("the forged member of lobby within the caps joining", func(f frame) bool { return f.str("event") == "join" && f.str("id") == "8000000" })
	if got := p.metrics()[seriesRejected("snapshot")]; got != 1 {
		t.Errorf("%v snapshots rejected, want the one beyond the caps only", got)
	}
}
