package cluster

import (
	"sort"
	"strconv"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// Presence across instances, as any relay sees it: each other instance
// (node) publishes snapshots of its members by room, and join, leave and
// nick events in between. Both carry the node's generation, which counts
// its presence changes: an event is applied only when it is newer than
// what is known of that node's room, and a snapshot replaces a room's view
// when it is at least as new, so that a lost event is repaired by the next
// snapshot and a change arriving both ways is announced once.
//
// Rooms can be big: a view lists at most ListCap members of a node's room
// and keeps the node's count of them beside, so that memory does not grow
// with the size of rooms elsewhere while counts stay exact.
//
// A snapshot is input as much as an event is, and follows the same rules:
// an entry about a member of the reading instance is dropped (another node
// cannot speak for it), and a room's count is believed beyond the members
// listed only when the list is full (every node lists up to ListCap), and
// then up to MaxRoomCount.

// DefaultListCap is how many members of one node's room a view lists when
// none is given.
const DefaultListCap = 256

// maxGenAhead bounds how far an event's generation may run ahead of what
// is known of its node: a forged or corrupt generation far ahead would
// otherwise shut out every later event and snapshot of that room. A node
// makes far fewer presence changes between two of its snapshots.
const maxGenAhead = 1 << 16

// MaxRoomCount bounds the members one node is believed to have in one
// room, whether a snapshot says more or events add up to more: far more
// than one instance holds, and small enough that a forged count does not
// swamp the counts of a whole cluster.
const MaxRoomCount = 100_000

// Snapshot is a node's presence at generation Gen.
type Snapshot struct {
	Gen   uint64
	Rooms map[string]RoomSnapshot
}

// RoomSnapshot is a node's members in one room: Count of them, of which
// Members lists at most a bounded number.
type RoomSnapshot struct {
	Count   int
	Members []chat.Member
}

// View is what this instance knows of the other nodes' members. It is not
// safe for concurrent use: its owner locks around it.
type View struct {
	// ListCap bounds the members listed per node and room.
	ListCap int
	// DeadAfter is how long a node's snapshot may be missing, seen missing
	// at least twice, before the node counts as dead.
	DeadAfter time.Duration
	// Forget is how long a dead node's generation is remembered, so that
	// its late events are not taken for news.
	Forget time.Duration
	// Local reports whether id is a member of this instance in room: a
	// snapshot entry about it is forged and dropped. nil drops none.
	Local func(room, id string) bool

	nodes map[string]*node
	// ids counts, for each member id, the rooms of live nodes that list
	// it, so that an id allocator can ask in constant time whether an id
	// is in use elsewhere.
	ids map[string]int
}

type node struct {
	rooms   map[string]*roomView
	snapGen uint64 // generation of the last snapshot applied
	misses  int    // looks in a row without its snapshot
	missing time.Time
	dead    bool
	seen    time.Time
}

type roomView struct {
	gen     uint64
	count   int
	members map[string]chat.Member
}

// NewView returns an empty view.
func NewView(listCap int, deadAfter, forget time.Duration) *View {
	if listCap <= 0 {
		listCap = DefaultListCap
	}
	return &View{ListCap: listCap, DeadAfter: deadAfter, Forget: forget, nodes: make(map[string]*node), ids: make(map[string]int)}
}

// list sets m in rv's members, keeping v.ids.
func (v *View) list(rv *roomView, m chat.Member) {
	if _, ok := rv.members[m.ID]; !ok {
		v.ids[m.ID]++
	}
	rv.members[m.ID] = m
}

// unlist removes id from rv's members, keeping v.ids.
func (v *View) unlist(rv *roomView, id string) {
	if _, ok := rv.members[id]; !ok {
		return
	}
	delete(rv.members, id)
	if v.ids[id]--; v.ids[id] <= 0 {
		delete(v.ids, id)
	}
}

// unlistAll removes every member of rv from v.ids; rv's own map is left
// to its caller, who drops or replaces it.
func (v *View) unlistAll(rv *roomView) {
	for id := range rv.members {
		if v.ids[id]--; v.ids[id] <= 0 {
			delete(v.ids, id)
		}
	}
}

// Listed reports whether a live node lists a member with id.
func (v *View) Listed(id string) bool { return v.ids[id] > 0 }

func (v *View) node(id string, now time.Time) *node {
	n := v.nodes[id]
	if n == nil {
		n = &node{rooms: make(map[string]*roomView), seen: now}
		v.nodes[id] = n
	}
	return n
}

// Nodes lists the nodes the view knows, dead ones included.
func (v *View) Nodes() []string {
	out := make([]string, 0, len(v.nodes))
	for id := range v.nodes {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// Known reports whether node is known and alive.
func (v *View) Known(id string) bool {
	n := v.nodes[id]
	return n != nil && !n.dead
}

// Dead reports whether node was found dead.
func (v *View) Dead(id string) bool {
	n := v.nodes[id]
	return n != nil && n.dead
}

// NeedsSnapshot reports whether a snapshot of node at generation gen would
// tell something new: the node is unknown, was dead, or has moved on.
func (v *View) NeedsSnapshot(id string, gen uint64) bool {
	n := v.nodes[id]
	return n == nil || n.dead || gen != n.snapGen
}

// Alive records that node's snapshot is present, reviving a node found
// dead.
func (v *View) Alive(id string, now time.Time) {
	n := v.node(id, now)
	n.misses, n.dead, n.seen = 0, false, now
}

// SnapshotRooms records that a whole snapshot of node was read, and
// returns the rooms that ApplySnapshotRoom must then be called for: those
// in the snapshot and those the view holds for node.
func (v *View) SnapshotRooms(id string, s *Snapshot, now time.Time) []string {
	n := v.node(id, now)
	n.snapGen = s.Gen
	var rooms []string
	for room := range n.rooms {
		if _, ok := s.Rooms[room]; !ok {
			rooms = append(rooms, room)
		}
	}
	for room := range s.Rooms {
		rooms = append(rooms, room)
	}
	sort.Strings(rooms)
	return rooms
}

// ApplySnapshotRoom replaces node's view of room with the snapshot's when
// the snapshot is at least as new as the events applied to it, and returns
// the events that tell the difference, and how many of the snapshot's
// entries were dropped as being about a member of this instance.
func (v *View) ApplySnapshotRoom(id, room string, s *Snapshot) (events []*chat.Event, dropped int) {
	n := v.nodes[id]
	if n == nil || n.dead {
		return nil, 0
	}
	rv := n.rooms[room]
	if rv != nil && s.Gen < rv.gen {
		return nil, 0 // events newer than the snapshot were applied
	}
	rs := s.Rooms[room]
	next := make(map[string]chat.Member, min(len(rs.Members), v.ListCap))
	for _, m := range rs.Members {
		if len(next) >= v.ListCap {
			break
		}
		if m.ID == "" {
			continue
		}
		if v.Local != nil && v.Local(room, m.ID) {
			dropped++
			continue
		}
		next[m.ID] = m
	}
	var prev map[string]chat.Member
	if rv != nil {
		prev = rv.members
		v.unlistAll(rv)
	}
	count := len(next)
	if dropped == 0 && len(rs.Members) >= v.ListCap {
		// A full list: the node has more than it lists. A list with a
		// forged entry is not trusted for more than it holds.
		count = max(min(rs.Count, MaxRoomCount), count)
	}
	if count == 0 {
		delete(n.rooms, room) // snapGen keeps older events out
	} else {
		for id := range next {
			v.ids[id]++
		}
		n.rooms[room] = &roomView{gen: s.Gen, count: count, members: next}
	}
	return MembersChanged(prev, next), dropped
}

// ApplyEvent applies a join, leave or nick event of node at generation gen
// and reports whether it is news to deliver. A leave or nick of a member
// the view does not list is not news: a forged or repeated one changes
// nothing.
func (v *View) ApplyEvent(id, room string, gen uint64, ev *chat.Event, now time.Time) bool {
	n := v.node(id, now)
	if n.dead {
		return false
	}
	rv := n.rooms[room]
	gate := n.snapGen
	if rv != nil {
		gate = max(gate, rv.gen)
	}
	if gen <= gate || gen-gate > maxGenAhead {
		return false
	}
	if rv == nil {
		rv = &roomView{members: make(map[string]chat.Member)}
		n.rooms[room] = rv
	}
	rv.gen = gen
	_, listed := rv.members[ev.ID]
	switch ev.Kind {
	case chat.KindJoin:
		if listed {
			return false
		}
		rv.count = min(rv.count+1, MaxRoomCount)
		if len(rv.members) < v.ListCap {
			v.list(rv, ev.Member())
		}
		return true
	case chat.KindLeave:
		if !listed {
			if rv.count > len(rv.members) {
				rv.count-- // an unlisted member of a big room
			}
			return false
		}
		v.unlist(rv, ev.ID)
		rv.count = max(rv.count-1, len(rv.members))
		if rv.count == 0 {
			delete(n.rooms, room)
		}
		return true
	case chat.KindNick:
		if !listed {
			return false
		}
		v.list(rv, ev.Member())
		return true
	}
	return false
}

// Missing records that node's snapshot was looked for and not found. When
// it has been missing twice and for DeadAfter, the node is dead: the
// returned events are its members leaving, by room.
func (v *View) Missing(id string, now time.Time) map[string][]*chat.Event {
	n := v.nodes[id]
	if n == nil {
		return nil
	}
	if n.dead {
		if now.Sub(n.seen) > v.Forget {
			delete(v.nodes, id)
		}
		return nil
	}
	if n.misses == 0 {
		n.missing = now
	}
	n.misses++
	if n.misses < 2 || now.Sub(n.missing) < v.DeadAfter {
		return nil
	}
	n.dead = true
	out := make(map[string][]*chat.Event, len(n.rooms))
	for room, rv := range n.rooms {
		out[room] = MembersChanged(rv.members, nil)
		v.unlistAll(rv)
	}
	clear(n.rooms)
	return out
}

// Members lists room's members on other live nodes: at most ListCap per
// node.
func (v *View) Members(room string) []chat.Member {
	var out []chat.Member
	seen := make(map[string]bool)
	for _, n := range v.nodes {
		if n.dead {
			continue
		}
		if rv := n.rooms[room]; rv != nil {
			for id, m := range rv.members {
				if !seen[id] {
					seen[id] = true
					out = append(out, m)
				}
			}
		}
	}
	return out
}

// Count returns how many members room has on other live nodes, listed or
// not.
func (v *View) Count(room string) int {
	total := 0
	for _, n := range v.nodes {
		if rv := n.rooms[room]; rv != nil && !n.dead {
			total += rv.count
		}
	}
	return total
}

// HighestID returns the highest decimal member id below limit listed by a
// live node: a floor for the id counter.
func (v *View) HighestID(limit uint64) uint64 {
	var high uint64
	for id := range v.ids {
		if x, err := strconv.ParseUint(id, 10, 64); err == nil && x < limit {
			high = max(high, x)
		}
	}
	return high
}

// MembersChanged returns the join, leave and nick events that turn prev
// into next, in id order.
func MembersChanged(prev, next map[string]chat.Member) []*chat.Event {
	var out []*chat.Event
	for id, m := range prev {
		if _, ok := next[id]; !ok {
			out = append(out, chat.NewPresence(chat.KindLeave, m))
		}
	}
	for id, m := range next {
		old, ok := prev[id]
		switch {
		case !ok:
			out = append(out, chat.NewPresence(chat.KindJoin, m))
		case old.Nick != m.Nick || old.User != m.User:
			out = append(out, chat.NewPresence(chat.KindNick, m))
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return chat.IDLess(out[i].ID, out[j].ID) })
	return out
}
