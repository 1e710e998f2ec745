package cluster

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

func join(id, nick string) *chat.Event {
	return &chat.Event{Kind: chat.KindJoin, ID: id, Nick: nick}
}

func TestViewEventsThenSnapshotRepairsALostEvent(t *testing.T) {
	v := NewView(0, time.Second, time.Minute)
	now := time.Now()
	// Joins 1..3 at generations 1..3; the event of generation 2 is lost.
	if !v.ApplyEvent("n", "r", 1, join("1", "a"), now) || !v.ApplyEvent("n", "r", 3, join("3", "c"), now) {
		t.Fatal("fresh joins were not news")
	}
	if v.ApplyEvent("n", "r", 3, join("3", "c"), now) {
		t.Fatal("a repeated event was news")
	}
	// The snapshot at the same generation as the last event applied is
	// the truth: it repairs the lost join, and announces only it.
	snap := &Snapshot{Gen: 3, Rooms: map[string]RoomSnapshot{"r": {Count: 3, Members: []chat.Member{{ID: "1", Nick: "a"}, {ID: "2", Nick: "b"}, {ID: "3", Nick: "c"}}}}}
	v.Alive("n", now)
	rooms, _ := v.SnapshotRooms("n", snap, now)
	if len(rooms) != 1 || rooms[0] != "r" {
		t.Fatalf("rooms to apply = %v, want [r]", rooms)
	}
	evs, _ := v.ApplySnapshotRoom("n", "r", snap)
	if len(evs) != 1 || evs[0].Kind != chat.KindJoin || evs[0].ID != "2" {
		t.Fatalf("snapshot events = %v, want the join of 2 only", evs)
	}
	if v.Count("r") != 3 || len(v.Members("r")) != 3 {
		t.Fatalf("count %d, members %v, want 3", v.Count("r"), v.Members("r"))
	}
	// An older snapshot does not undo newer events.
	v.ApplyEvent("n", "r", 4, &chat.Event{Kind: chat.KindLeave, ID: "1"}, now)
	if evs, _ := v.ApplySnapshotRoom("n", "r", snap); len(evs) != 0 {
		t.Fatalf("an older snapshot changed the view: %v", evs)
	}
}

func TestViewRejectsWhatChangesNothing(t *testing.T) {
	v := NewView(0, time.Second, time.Minute)
	now := time.Now()
	v.ApplyEvent("n", "r", 1, join("1", "a"), now)
	if v.ApplyEvent("other", "r", 5, &chat.Event{Kind: chat.KindLeave, ID: "1"}, now) {
		t.Error("a leave of a member another node does not have was news")
	}
	if v.ApplyEvent("n", "r", 2+maxGenAhead, &chat.Event{Kind: chat.KindLeave, ID: "1"}, now) {
		t.Error("an event far ahead of the node's generation was applied")
	}
	if !v.ApplyEvent("n", "r", 2, &chat.Event{Kind: chat.KindNick, ID: "1", Nick: "b"}, now) {
		t.Error("a nick change after the far-ahead event was refused: the room is shut out")
	}
}

func TestViewCountsBeyondTheListCap(t *testing.T) {
	v := NewView(10, time.Second, time.Minute)
	now := time.Now()
	for i := 1; i <= 100; i++ {
		v.ApplyEvent("n", "big", uint64(i), join(strconv.Itoa(i), ""), now)
	}
	if got := len(v.Members("big")); got != 10 {
		t.Errorf("%d members listed, want the cap of 10", got)
	}
	if got := v.Count("big"); got != 100 {
		t.Errorf("count %d, want 100", got)
	}
	for i := 100; i > 50; i-- {
		v.ApplyEvent("n", "big", uint64(201-i), &chat.Event{Kind: chat.KindLeave, ID: strconv.Itoa(i)}, now)
	}
	if got := v.Count("big"); got != 50 {
		t.Errorf("count %d after 50 leaves, want 50", got)
	}
	full := make([]chat.Member, 10)
	for i := range full {
		full[i] = chat.Member{ID: strconv.Itoa(i + 1)}
	}
	snap := &Snapshot{Gen: 1000, Rooms: map[string]RoomSnapshot{"big": {Count: 50000, Members: full}}}
	v.Alive("n", now)
	v.SnapshotRooms("n", snap, now)
	v.ApplySnapshotRoom("n", "big", snap)
	if got := v.Count("big"); got != 50000 {
		t.Errorf("count %d after a snapshot of 50000 with a full list, want 50000", got)
	}
}

// TestViewSnapshotFollowsTheRulesOfEvents: a snapshot entry about a
// member of the reading instance is dropped and counted, and a count is
// not believed beyond a list that is not full, nor beyond MaxRoomCount.
func TestViewSnapshotFollowsTheRulesOfEvents(t *testing.T) {
	v := NewView(3, time.Second, time.Minute)
	v.Local = func(room, id string) bool { return room == "r" && id == "7" }
	now := time.Now()
	v.Alive("n", now)
	snap := &Snapshot{Gen: 1, Rooms: map[string]RoomSnapshot{
		"r":    {Count: 10_000_000, Members: []chat.Member{{ID: "7", Nick: "forged"}, {ID: "8", Nick: "b"}}},
		"full": {Count: 10_000_000, Members: []chat.Member{{ID: "1"}, {ID: "2"}, {ID: "3"}}},
		"part": {Count: 10_000_000, Members: []chat.Member{{ID: "4"}}},
	}}
	v.SnapshotRooms("n", snap, now)
	evs, dropped := v.ApplySnapshotRoom("n", "r", snap)
	if dropped != 1 || len(evs) != 1 || evs[0].ID != "8" {
		t.Fatalf("events %v, dropped %d: want the join of 8 only, 1 dropped", evs, dropped)
	}
	if v.Listed("7") || v.Count("r") != 1 {
		t.Errorf("after a forged entry about a local member: listed %v, count %d; want unlisted, 1", v.Listed("7"), v.Count("r"))
	}
	v.ApplySnapshotRoom("n", "full", snap)
	if got := v.Count("full"); got != MaxRoomCount {
		t.Errorf("count of a full list claiming 10,000,000 = %d, want MaxRoomCount %d", got, MaxRoomCount)
	}
	v.ApplySnapshotRoom("n", "part", snap)
	if got := v.Count("part"); got != 1 {
		t.Errorf("count of a list of 1 claiming 10,000,000 = %d, want 1", got)
	}
}

func TestViewDeadNodeLeaves(t *testing.T) {
	v := NewView(0, time.Second, time.Minute)
	now := time.Now()
	v.ApplyEvent("n", "r", 1, join("1", "a"), now)
	if gone := v.Missing("n", now); gone != nil {
		t.Fatalf("dead after one miss: %v", gone)
	}
	if gone := v.Missing("n", now.Add(500*time.Millisecond)); gone != nil {
		t.Fatalf("dead before DeadAfter: %v", gone)
	}
	gone := v.Missing("n", now.Add(2*time.Second))
	if len(gone["r"]) != 1 || gone["r"][0].Kind != chat.KindLeave {
		t.Fatalf("leaves of a dead node = %v, want the leave of 1 in r", gone)
	}
	if v.Count("r") != 0 || v.ApplyEvent("n", "r", 2, join("2", ""), now) {
		t.Fatal("a dead node's members or late events still count")
	}
}

// TestViewCapsAndCountOnlyRooms: a room not followed here is kept as a
// count with where it came from, and filled when it is followed; a
// snapshot beyond a node's caps, or one that would take the view past
// its totals, is rejected as a whole.
func TestViewCapsAndCountOnlyRooms(t *testing.T) {
	v := NewView(0, time.Second, time.Minute)
	followed := map[string]bool{"mine": true}
	v.Followed = func(room string) bool { return followed[room] }
	now := time.Now()
	v.Alive("n", now)
	snap := &Snapshot{Gen: 1, Rooms: map[string]RoomSnapshot{
		"mine":    {Count: 1, Members: []chat.Member{{ID: "1", Nick: "a"}}},
		"phantom": {Count: 2, Members: []chat.Member{{ID: "2"}, {ID: "3"}}, Part: 7},
	}}
	rooms, err := v.SnapshotRooms("n", snap, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, room := range rooms {
		v.ApplySnapshotRoom("n", room, snap)
	}
	if len(v.Members("phantom")) != 0 || v.Count("phantom") != 2 || v.Listed("2") {
		t.Fatalf("phantom room: members %v, count %d; want a count of 2 only", v.Members("phantom"), v.Count("phantom"))
	}
	if got := v.Unlisted("phantom"); got["n"] != 7 || len(got) != 1 {
		t.Fatalf("Unlisted(phantom) = %v, want n at part 7", got)
	}
	followed["phantom"] = true
	evs, _ := v.FillRoom("n", "phantom", 1, snap.Rooms["phantom"])
	if len(evs) != 2 || len(v.Members("phantom")) != 2 || !v.Listed("3") {
		t.Fatalf("after FillRoom: events %v, members %v; want 2 and 3", evs, v.Members("phantom"))
	}

	big := &Snapshot{Gen: 2, Rooms: make(map[string]RoomSnapshot)}
	for i := 0; i <= MaxNodeRooms; i++ {
		big.Rooms["r"+strconv.Itoa(i)] = RoomSnapshot{Count: 1, Members: []chat.Member{{ID: strconv.Itoa(i)}}}
	}
	if _, err := v.SnapshotRooms("n", big, now); !errors.Is(err, ErrTooBig) {
		t.Fatalf("a snapshot of %d rooms: %v, want ErrTooBig", len(big.Rooms), err)
	}
	if v.Count("mine") != 1 || v.NeedsSnapshot("n", 1) {
		t.Fatal("a rejected snapshot changed the view")
	}
	// Nodes at the per-node cap fill the total; the next is rejected.
	delete(big.Rooms, "r0")
	for i := 0; i < MaxRooms/MaxNodeRooms; i++ {
		id := "m" + strconv.Itoa(i)
		v.Alive(id, now)
		rooms, err := v.SnapshotRooms(id, big, now)
		if i < MaxRooms/MaxNodeRooms-1 {
			if err != nil {
				t.Fatalf("node %d of %d at the per-node cap: %v", i+1, MaxRooms/MaxNodeRooms, err)
			}
			for _, room := range rooms {
				v.ApplySnapshotRoom(id, room, big)
			}
		} else if !errors.Is(err, ErrTooBig) {
			t.Fatalf("a snapshot taking the view past %d rooms: %v, want ErrTooBig", MaxRooms, err)
		}
	}
}
