package chatroom

import (
	"strconv"
	"testing"
)

// TestClusterCounterSetBackUnderLiveIDs: with members live on two
// instances, the shared id counter is set back just under the lowest live
// id. Every connection opened after that, on either instance, gets an id
// no live connection has. Before, a block taken from the set-back counter
// was handed out as it was: the next block after the first instance's own
// reached into the ids of the other instance's members, and each instance
// then dropped the twin's messages as being about its own member.
func TestClusterCounterSetBackUnderLiveIDs(t *testing.T) {
	mc, p1, p2 := startTwoInstances(t, "ttl 3s")
	procs := []*caddyProc{p1, p2}
	// One observer per instance sees every join of the other instance:
	// when it has, that instance's view lists the joiner.
	var observers [2]*wsClient
	live := make(map[string]int) // id -> instance
	lowest := uint64(0)
	add := func(i int, id string) {
		t.Helper()
		if j, dup := live[id]; dup {
			t.Fatalf("instance %d handed out id %s, live on instance %d", i+1, id, j+1)
		}
		live[id] = i
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			t.Fatalf("id %q is not a counter id", id)
		}
		if lowest == 0 || n < lowest {
			lowest = n
		}
	}
	seenElsewhere := func(i int, id string) {
		t.Helper()
		observers[1-i].await("join of "+id, func(f frame) bool { return f.str("event") == "join" && f.str("id") == id })
	}
	for i, p := range procs {
		c, id := connect(t, p.url("ws", "/ws"))
		observers[i] = c
		add(i, id)
	}
	for round := 0; round < 3; round++ {
		for i, p := range procs {
			_, id := connect(t, p.url("ws", "/ws"))
			add(i, id)
			seenElsewhere(i, id)
		}
	}

	mc.Set("chatroom:id", strconv.FormatUint(lowest-1, 10), 0)

	// Enough joins on each to use up the block each instance holds and
	// take at least one more from the set-back counter, staying under
	// presence_limit so that every join is announced.
	for round := 0; round < 36; round++ {
		for i, p := range procs {
			_, id := connect(t, p.url("ws", "/ws"))
			add(i, id)
			seenElsewhere(i, id)
		}
	}
}
