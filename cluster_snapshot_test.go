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
// chunks, and its entry in the index of instances, kept there until the
// instance under test has read it (rejected counts at least want).
func forgeInstance(t *testing.T, mc *testenv.TestMemcached, p *caddyProc, gen int, chunks []string, wantRejected float64) {
	t.Helper()
	const prefix = "chatroom:"
	for i, c := range chunks {
		mc.Set(fmt.Sprintf("%snode:%s:%d", prefix, forgedNode, i), c, 0)
	}
	mc.Set(prefix+"node:"+forgedNode, fmt.Sprintf(`{"gen":%d,"chunks":%d}`, gen, len(chunks)), 0)
	testenv.AwaitCondition(t, "the forged snapshot read and rejected", func() bool {
		if index := mc.Get(prefix + "nodes"); !containsAll(splitFields(index), forgedNode) {
			// The instance rewrites the index with compare-and-swap:
			// put the forged instance back until it has been read.
			mc.Set(prefix+"nodes", index+" "+forgedNode, 0)
		}
		return p.metrics()[seriesRejected("snapshot")] >= wantRejected
	})
}

// TestClusterSnapshotCannotSpeakForALocalMember: a forged instance's
// snapshot lists a member of the reading instance under another nick, in a
// room it claims 10,000,000 members of. The entry is dropped and counted
// as a forged relay entry is; the next joiner's online list shows the
// member once, with its real nick, and the room's true size. Before, the
// list showed the member twice (once as the forger named it) and the room
// as one of 10,000,002.
func TestClusterSnapshotCannotSpeakForALocalMember(t *testing.T) {
	mc := testenv.StartMemcached(t)
	p := startCaddyCluster(t, "ttl 3s", mc.Addr)
	a, aid := connect(t, p.url("ws", "/ws"))
	a.send(map[string]any{"nick": "alice"}) // handled long before b joins: forging takes heartbeats

	forgeInstance(t, mc, p, 1, []string{
		fmt.Sprintf(`{"gen":1,"rooms":{"lobby":{"n":10000000,"m":[{"id":%q,"nick":"mallory"}]}}}`, aid),
	}, 1)

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
	if ids := onlineIDs(online); len(ids) != 2 || !containsAll(ids, aid, bid) {
		t.Errorf("online list %v, want exactly %s and %s", ids, aid, bid)
	}
	if c, ok := online["count"]; ok {
		t.Errorf("online frame has count %v: the room has 2 members, far under presence_limit", c)
	}
}

// splitFields splits s at spaces.
func splitFields(s string) []string { return strings.Fields(s) }
