package cluster

import (
	"errors"
	"fmt"
	"math"
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
//
// What other nodes publish is bounded by this instance, not by what they
// write: a snapshot of more than MaxNodeRooms rooms or MaxNodeMembers
// listed members, or one that would take the view past MaxRooms rooms or
// MaxMembers listed members in all, is rejected as a whole. A room this
// instance does not follow (no member of its own there) is kept by a
// snapshot as a count only, with where the node's snapshot lists it
// (RoomSnapshot.Part), so that its members can be fetched when a member of
// this instance joins; a room first heard of by an event is listed (within
// the totals) until the node's next snapshot.

// DefaultListCap is how many members of one node's room a view lists when
// none is given.
const DefaultListCap = 256

// maxGenAhead bounds how far an event's generation may run ahead of what
// is known of its node: a forged or corrupt generation far ahead would
// otherwise shut out every later event and snapshot of that room. A node
// makes far fewer presence changes between two of its snapshots.
const maxGenAhead = 1 << 16

// Caps on what the view takes from other nodes. A node writes at most
// MaxNodeRooms rooms and MaxNodeMembers listed members into its snapshot
// (the rest of its rooms travel by events only), so that a snapshot a
// node wrote is never rejected; forged ones beyond are. The totals bound
// the memory of the view whatever the number of nodes (the README's limits
// give the worst case, measured by TestWorstSnapshotsTheCapsAllow).
const (
	// MaxNodeRooms is the most rooms taken from one node's snapshot: the
	// default max_rooms of an instance.
	MaxNodeRooms = 10_000
	// MaxNodeMembers is the most members listed in one node's snapshot.
	MaxNodeMembers = 100_000
	// MaxRooms is the most rooms the view holds for all nodes together.
	MaxRooms = 100_000
	// MaxMembers is the most members the view lists for all nodes
	// together (members of followed rooms only). It is far more than the
	// hub shows: a room past presence_limit (at most 10,000) gets counts.
	MaxMembers = 50_000
)

// ErrTooBig is returned for a snapshot beyond the caps: it is rejected as a
// whole.
var ErrTooBig = errors.New("presence snapshot beyond the caps")

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
	// Part is where in the node's snapshot the room is (a relay's own
	// numbering), so that a relay can fetch the room's list alone when
	// this instance starts following it.
	Part int
}

// Listed returns how many members s lists in all.
func (s *Snapshot) Listed() int {
	n := 0
	for _, rs := range s.Rooms {
		n += len(rs.Members)
	}
	return n
}

// View is what this instance knows of the other nodes' members. It is not
// safe for concurrent use: its owner locks around it.
type View struct {
	// ListCap bounds the members listed per node and room.
	ListCap int
	// RoomCap bounds the rooms held for all nodes together; 0 means
	// MaxRooms. The operator's `remote_presence` sets it lower.
	RoomCap int
	// MemberCap bounds the members listed for all nodes together; 0
	// means MaxMembers.
	MemberCap int
	// DeadAfter is how long a node's snapshot may be missing, seen missing
	// at least twice, before the node counts as dead.
	DeadAfter time.Duration
	// Forget is how long a dead node's generation is remembered, so that
	// its late events are not taken for news.
	Forget time.Duration
	// Local reports whether id is a member of this instance in room: a
	// snapshot entry about it is forged and dropped. nil drops none.
	Local func(room, id string) bool
	// Followed reports whether this instance follows room (has members
	// there, or one on its way): only followed rooms get their members
	// listed, others a count. nil follows every room.
	Followed func(room string) bool

	nodes map[string]*node
	// ids counts, for each member id, the rooms of live nodes that list
	// it, so that an id allocator can ask in constant time whether an id
	// is in use elsewhere.
	ids map[string]int
	// rooms and listed count the room views and the member listings of
	// all nodes, for the caps.
	rooms, listed int
}

type node struct {
	rooms   map[string]*roomView
	listed  int    // members listed in its rooms
	snapGen uint64 // generation of the last snapshot applied
	misses  int    // looks in a row without its snapshot
	missing time.Time
	dead    bool
	seen    time.Time
}

type roomView struct {
	gen   uint64
	count int
	// members is nil in a room kept as a count only (not followed here).
	members map[string]chat.Member
	part    int // RoomSnapshot.Part of the snapshot it came from; -1 from events
}

// NewView returns an empty view.
func NewView(listCap int, deadAfter, forget time.Duration) *View {
	if listCap <= 0 {
		listCap = DefaultListCap
	}
	return &View{ListCap: listCap, DeadAfter: deadAfter, Forget: forget, nodes: make(map[string]*node), ids: make(map[string]int)}
}

// roomCap is the most rooms the view holds for all nodes.
func (v *View) roomCap() int {
	if v.RoomCap > 0 {
		return min(v.RoomCap, MaxRooms)
	}
	return MaxRooms
}

// memberCap is the most members the view lists for all nodes.
func (v *View) memberCap() int {
	if v.MemberCap > 0 {
		return min(v.MemberCap, MaxMembers)
	}
	return MaxMembers
}

// list sets m in rv's members (a room of n's), keeping v.ids and the
// counts of listings.
func (v *View) list(n *node, rv *roomView, m chat.Member) {
	if _, ok := rv.members[m.ID]; !ok {
		v.ids[m.ID]++
		v.listed++
		n.listed++
	}
	rv.members[m.ID] = m
}

// unlist removes id from rv's members, keeping v.ids and the counts.
func (v *View) unlist(n *node, rv *roomView, id string) {
	if _, ok := rv.members[id]; !ok {
		return
	}
	delete(rv.members, id)
	v.listed--
	n.listed--
	if v.ids[id]--; v.ids[id] <= 0 {
		delete(v.ids, id)
	}
}

// unlistAll removes every member of rv from v.ids and the counts; rv's
// own map is left to its caller, who drops or replaces it.
func (v *View) unlistAll(n *node, rv *roomView) {
	for id := range rv.members {
		if v.ids[id]--; v.ids[id] <= 0 {
			delete(v.ids, id)
		}
	}
	v.listed -= len(rv.members)
	n.listed -= len(rv.members)
}

// setRoom installs rv as n's view of room, keeping the count of rooms.
func (v *View) setRoom(n *node, room string, rv *roomView) {
	if _, ok := n.rooms[room]; !ok {
		v.rooms++
	}
	n.rooms[room] = rv
}

// dropRoom removes n's view of room, with its listings.
func (v *View) dropRoom(n *node, room string) {
	rv, ok := n.rooms[room]
	if !ok {
		return
	}
	v.unlistAll(n, rv)
	delete(n.rooms, room)
	v.rooms--
}

// followed reports whether room's members are listed.
func (v *View) followed(room string) bool { return v.Followed == nil || v.Followed(room) }

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
// in the snapshot and those the view holds for node. A snapshot beyond
// the caps is rejected with ErrTooBig and changes nothing.
func (v *View) SnapshotRooms(id string, s *Snapshot, now time.Time) ([]string, error) {
	if len(s.Rooms) > MaxNodeRooms || s.Listed() > MaxNodeMembers {
		return nil, fmt.Errorf("%w: %d rooms, %d members listed", ErrTooBig, len(s.Rooms), s.Listed())
	}
	n := v.node(id, now)
	listed := 0
	for room, rs := range s.Rooms {
		if v.followed(room) {
			listed += min(len(rs.Members), v.ListCap)
		}
	}
	if v.rooms-len(n.rooms)+len(s.Rooms) > v.roomCap() || v.listed-n.listed+listed > v.memberCap() {
		return nil, fmt.Errorf("%w: %d rooms and %d members with the other nodes'", ErrTooBig, v.rooms-len(n.rooms)+len(s.Rooms), v.listed-n.listed+listed)
	}
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
	return rooms, nil
}

// Refused records that node's snapshot at generation gen was read and
// rejected (beyond the caps, say), so that it is not read again until the
// node moves on. The view keeps what it had of the node.
func (v *View) Refused(id string, gen uint64, now time.Time) {
	v.node(id, now).snapGen = gen
}

// Stale records that node's snapshot must be read again even if its
// generation stays: a room this instance now follows could not be filled
// from it (FillRoom), and only a whole snapshot lists it.
func (v *View) Stale(id string) {
	if n := v.nodes[id]; n != nil {
		n.snapGen = math.MaxUint64
	}
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
	rs, ok := s.Rooms[room]
	if !ok {
		rs.Part = -1
	}
	if !v.followed(room) {
		// Kept as a count: the members are fetched when this instance
		// follows the room. A count is believed beyond the list only
		// when the list is full, as below.
		var prev map[string]chat.Member
		if rv != nil {
			prev = rv.members
		}
		for _, m := range rs.Members {
			if v.Local != nil && v.Local(room, m.ID) {
				dropped++
			}
		}
		count := len(rs.Members) - dropped
		if dropped == 0 && len(rs.Members) >= v.ListCap {
			count = max(min(rs.Count, MaxRoomCount), count)
		}
		v.dropRoom(n, room)
		if count > 0 {
			v.setRoom(n, room, &roomView{gen: s.Gen, count: count, part: rs.Part})
		}
		return MembersChanged(prev, nil), dropped
	}
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
	}
	v.dropRoom(n, room)
	count := len(next)
	if dropped == 0 && len(rs.Members) >= v.ListCap {
		// A full list: the node has more than it lists. A list with a
		// forged entry is not trusted for more than it holds.
		count = max(min(rs.Count, MaxRoomCount), count)
	}
	if count > 0 { // else none: snapGen keeps older events out
		rv := &roomView{gen: s.Gen, count: count, members: make(map[string]chat.Member, len(next)), part: rs.Part}
		v.setRoom(n, room, rv)
		for _, m := range next {
			v.list(n, rv, m)
		}
	}
	return MembersChanged(prev, next), dropped
}

// Unlisted returns the nodes that keep room as a count only, with where
// their snapshot lists it (-1: not known, the view came from events), so
// that a relay can fetch the lists when this instance starts following
// room.
func (v *View) Unlisted(room string) map[string]int {
	var out map[string]int
	for id, n := range v.nodes {
		if rv := n.rooms[room]; rv != nil && !n.dead && rv.members == nil {
			if out == nil {
				out = make(map[string]int)
			}
			out[id] = rv.part
		}
	}
	return out
}

// FillRoom lists the members of a room that node's view keeps as a count
// only, from rs, the room as the part of node's snapshot at generation gen
// lists it: what a relay fetched when this instance started following the
// room. The list may be older than events applied since (the next
// snapshot repairs it); its entries follow the rules of ApplySnapshotRoom.
// It returns the joins that the list tells, and the entries dropped.
func (v *View) FillRoom(id, room string, gen uint64, rs RoomSnapshot) (events []*chat.Event, dropped int) {
	n := v.nodes[id]
	if n == nil || n.dead {
		return nil, 0
	}
	rv := n.rooms[room]
	if rv == nil || rv.members != nil || gen < n.snapGen || len(rs.Members) > v.ListCap {
		return nil, 0
	}
	if v.listed+len(rs.Members) > v.memberCap() {
		return nil, 0
	}
	rv.members = make(map[string]chat.Member, len(rs.Members))
	for _, m := range rs.Members {
		if m.ID == "" {
			continue
		}
		if v.Local != nil && v.Local(room, m.ID) {
			dropped++
			continue
		}
		v.list(n, rv, m)
	}
	rv.count = max(rv.count, len(rv.members))
	return MembersChanged(nil, rv.members), dropped
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
		if ev.Kind != chat.KindJoin || v.rooms >= v.roomCap() {
			return false
		}
		// Listed even when not followed: an event is news a snapshot
		// may not have yet, for a joiner on its way, and the totals
		// bound what events add. The node's next snapshot makes the
		// room a count again.
		rv = &roomView{part: -1, members: make(map[string]chat.Member)}
		v.setRoom(n, room, rv)
	}
	rv.gen = gen
	_, listed := rv.members[ev.ID]
	switch ev.Kind {
	case chat.KindJoin:
		if listed {
			return false
		}
		rv.count = min(rv.count+1, MaxRoomCount)
		if rv.members != nil && len(rv.members) < v.ListCap && v.listed < v.memberCap() {
			v.list(n, rv, ev.Member())
		}
		return rv.members != nil
	case chat.KindLeave:
		if !listed {
			if rv.count > len(rv.members) {
				rv.count-- // an unlisted member of a big room, or of a count
			}
			if rv.count == 0 {
				v.dropRoom(n, room)
			}
			return false
		}
		v.unlist(n, rv, ev.ID)
		rv.count = max(rv.count-1, len(rv.members))
		if rv.count == 0 {
			v.dropRoom(n, room)
		}
		return true
	case chat.KindNick:
		if !listed {
			return false
		}
		v.list(n, rv, ev.Member())
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
		v.dropRoom(n, room)
	}
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
