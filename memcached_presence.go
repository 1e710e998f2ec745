package chatroom

import (
	"encoding/json"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"go.uber.org/zap"
)

// Presence across instances. Each instance owns one key, its snapshot
// (<prefix>node:<node>: its members by room), rewritten every heartbeat
// with the instance's ttl, so that it vanishes within ttl when the instance
// dies. Instances find each other through an index key (<prefix>nodes),
// kept with Add and CompareAndSwap. Join, leave and nick events also go
// through the room logs, to arrive within one poll.
//
// Snapshots and events of one instance are put in one order by its
// generation: each presence change increments it, every event carries it,
// and a snapshot carries the generation it reflects. A reader applies an
// event only when it is newer than what it knows of that instance's room,
// and a snapshot only when it is newer than the events applied, so that a
// change arriving both ways is announced once.

// nodeSnapshot is the value of an instance's snapshot key.
type nodeSnapshot struct {
	// Gen is the generation the snapshot reflects.
	Gen uint64 `json:"gen"`
	// IDHigh is the highest id counter value the instance obtained: a
	// re-seed of the counter must land above it.
	IDHigh uint64 `json:"id_high,omitempty"`
	// Rooms lists the instance's members by room.
	Rooms map[string][]chat.Member `json:"rooms,omitempty"`
}

// remoteNode is what this instance knows of another.
type remoteNode struct {
	rooms   map[string]*remoteRoom
	snapGen uint64 // generation of the last snapshot applied
	idHigh  uint64
	misses  int       // heartbeats in a row without its snapshot
	missing time.Time // since the first of them
	dead    bool
	seen    time.Time
}

// remoteRoom is another instance's members of one room.
type remoteRoom struct {
	gen     uint64
	members map[string]chat.Member
}

// downProbe is how often an unreachable memcached is tried again: a refused
// connection costs nothing, and it bounds how long the cluster stays split
// after memcached returns.
const downProbe = 250 * time.Millisecond

// deadNodeMemory is how long a dead instance's generation is remembered,
// so that its late events are not taken for news.
const deadNodeMemory = 10 * time.Minute

// indexTTL is the lifetime of the index of instances, refreshed by every
// live instance at each heartbeat.
func (r *memcachedRegistry) indexTTL() time.Duration { return max(3*r.nodeTTL, time.Minute) }

// heartbeatLoop writes this instance's snapshot, keeps it in the index and
// reads the others'. While memcached is unreachable it only probes, every
// downProbe.
func (r *memcachedRegistry) heartbeatLoop() {
	defer r.wg.Done()
	t := time.NewTimer(r.heartbeat) // Start made the first beat
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		case <-r.wakeHeartbeat:
		}
		r.beat()
		period := r.heartbeat
		if !r.client.isUp() {
			period = min(period, downProbe)
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(period)
	}
}

// beat is one heartbeat. It always tries to write the snapshot: that is
// also how an unreachable memcached is probed.
func (r *memcachedRegistry) beat() {
	snap := r.snapshot()
	value, err := json.Marshal(snap)
	if err != nil {
		return
	}
	if err := r.client.set(&memcache.Item{Key: r.keys.node(r.nodeID), Value: value, Expiration: expirySeconds(r.nodeTTL)}); err != nil {
		return
	}
	ids := r.joinIndex()
	keys := r.knownNodeKeys()
	have := make(map[string]bool, len(keys))
	for _, k := range keys {
		have[k] = true
	}
	for _, id := range ids {
		if k := r.keys.node(id); id != r.nodeID && !have[k] {
			keys = append(keys, k)
		}
	}
	items, err := r.client.getMulti(keys)
	if err != nil {
		return
	}
	r.applySnapshots(items, true)
}

// snapshot describes this instance's members.
func (r *memcachedRegistry) snapshot() nodeSnapshot {
	idHigh := r.ids.blockEnd()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := nodeSnapshot{Gen: r.gen, IDHigh: idHigh, Rooms: make(map[string][]chat.Member, len(r.local))}
	for room, members := range r.local {
		list := make([]chat.Member, 0, len(members))
		for _, m := range members {
			list = append(list, m)
		}
		s.Rooms[room] = list
	}
	return s
}

// joinIndex makes sure the index lists this instance, drops instances
// found dead, refreshes its lifetime, and returns the instances it lists.
func (r *memcachedRegistry) joinIndex() []string {
	key := r.keys.nodeIndex()
	ttl := expirySeconds(r.indexTTL())
	it, err := r.client.get(key)
	if isMiss(err) {
		_ = r.client.add(&memcache.Item{Key: key, Value: []byte(r.nodeID), Expiration: ttl})
		return nil // another instance may have won the add: read it next time
	}
	if err != nil {
		return nil
	}
	ids := strings.Fields(string(it.Value))
	r.mu.Lock()
	keep := ids[:0:0]
	self := false
	for _, id := range ids {
		if n := r.nodes[id]; n != nil && n.dead {
			continue
		}
		self = self || id == r.nodeID
		keep = append(keep, id)
	}
	r.mu.Unlock()
	if !self {
		keep = append(keep, r.nodeID)
	}
	if len(keep) != len(ids) || !self {
		it.Value = []byte(strings.Join(keep, " "))
		it.Expiration = ttl
		_ = r.client.cas(it) // a conflict is retried next heartbeat
	} else {
		_ = r.client.touch(key, ttl)
	}
	return keep
}

// leaveIndex removes this instance from the index, on Close.
func (r *memcachedRegistry) leaveIndex() {
	key := r.keys.nodeIndex()
	for attempt := 0; attempt < 3; attempt++ {
		it, err := r.client.get(key)
		if err != nil {
			return
		}
		ids := strings.Fields(string(it.Value))
		keep := ids[:0:0]
		for _, id := range ids {
			if id != r.nodeID {
				keep = append(keep, id)
			}
		}
		if len(keep) == len(ids) {
			return
		}
		it.Value = []byte(strings.Join(keep, " "))
		if err := r.client.cas(it); err == nil || isMiss(err) || !answer(err) {
			return
		}
	}
}

// knownNodeKeys lists the snapshot keys of the instances this one knows.
func (r *memcachedRegistry) knownNodeKeys() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]string, 0, len(r.nodes))
	for id := range r.nodes {
		keys = append(keys, r.keys.node(id))
	}
	return keys
}

// unknownNodeKeys lists the snapshot keys of instances that the index
// value lists and this instance does not know yet.
func (r *memcachedRegistry) unknownNodeKeys(index []byte) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var keys []string
	for _, id := range strings.Fields(string(index)) {
		if id != r.nodeID && r.nodes[id] == nil {
			keys = append(keys, r.keys.node(id))
		}
	}
	return keys
}

// applySnapshots brings the view up to date with the snapshots in items.
// With detectDead, the known instances missing from items count a miss,
// and those missing twice in a row, a heartbeat apart, are dead: their
// members leave. Not at once, because after a memcached restart every
// snapshot is missing until its instance's next heartbeat. It returns the instances whose snapshot it read.
func (r *memcachedRegistry) applySnapshots(items map[string]*memcache.Item, detectDead bool) map[string]bool {
	prefix := r.keys.node("")
	now := time.Now()
	type change struct {
		node  string
		snap  *nodeSnapshot
		rooms []string
	}
	var changes []change
	live := make(map[string]bool)
	r.mu.Lock()
	for key, it := range items {
		id, ok := strings.CutPrefix(key, prefix)
		if !ok || id == r.nodeID {
			continue
		}
		var snap nodeSnapshot
		if json.Unmarshal(it.Value, &snap) != nil {
			continue
		}
		live[id] = true
		n := r.nodeLocked(id)
		wasDead := n.dead
		n.misses, n.dead, n.seen = 0, false, now
		n.idHigh = max(n.idHigh, snap.IDHigh)
		if !wasDead && snap.Gen <= n.snapGen && n.snapGen > 0 {
			continue
		}
		var rooms []string
		for room, rr := range n.rooms {
			if snap.Gen > rr.gen {
				rooms = append(rooms, room)
			}
		}
		for room := range snap.Rooms {
			if n.rooms[room] == nil {
				rooms = append(rooms, room)
			}
		}
		n.snapGen = max(n.snapGen, snap.Gen)
		changes = append(changes, change{id, &snap, rooms})
	}
	var dead []change
	if detectDead {
		for id, n := range r.nodes {
			if items[r.keys.node(id)] != nil {
				continue
			}
			if n.dead {
				if now.Sub(n.seen) > deadNodeMemory {
					delete(r.nodes, id)
				}
				continue
			}
			if n.misses == 0 {
				n.missing = now
			}
			n.misses++
			// Twice, and a heartbeat apart: right after memcached
			// returns, beats come in quick succession, before the
			// others had their chance to write again.
			if n.misses >= 2 && now.Sub(n.missing) >= r.heartbeat+downProbe {
				n.dead = true
				rooms := make([]string, 0, len(n.rooms))
				for room := range n.rooms {
					rooms = append(rooms, room)
				}
				dead = append(dead, change{node: id, rooms: rooms})
			}
		}
	}
	r.mu.Unlock()

	for _, c := range changes {
		for _, room := range c.rooms {
			r.deliver(room, func() []*chat.Event {
				r.mu.Lock()
				defer r.mu.Unlock()
				return r.applySnapshotRoomLocked(c.node, room, c.snap)
			})
		}
	}
	for _, c := range dead {
		r.logger.Info("instance gone: its members leave", zap.String("gone", c.node))
		for _, room := range c.rooms {
			r.deliver(room, func() []*chat.Event {
				r.mu.Lock()
				defer r.mu.Unlock()
				n := r.nodes[c.node]
				if n == nil || !n.dead {
					return nil
				}
				rr := n.rooms[room]
				if rr == nil {
					return nil
				}
				delete(n.rooms, room)
				return membersChanged(rr.members, nil)
			})
		}
	}
	return live
}

// nodeLocked returns the view of instance id, creating it. The caller
// holds r.mu.
func (r *memcachedRegistry) nodeLocked(id string) *remoteNode {
	n := r.nodes[id]
	if n == nil {
		n = &remoteNode{rooms: make(map[string]*remoteRoom), seen: time.Now()}
		r.nodes[id] = n
	}
	return n
}

// applySnapshotRoomLocked replaces one room of an instance's view with its
// snapshot, if the snapshot is newer, and returns the events that tell the
// difference. The caller holds r.mu.
func (r *memcachedRegistry) applySnapshotRoomLocked(node, room string, snap *nodeSnapshot) []*chat.Event {
	n := r.nodes[node]
	if n == nil || n.dead {
		return nil
	}
	rr := n.rooms[room]
	if rr != nil && snap.Gen <= rr.gen {
		return nil
	}
	next := make(map[string]chat.Member, len(snap.Rooms[room]))
	for _, m := range snap.Rooms[room] {
		if m.ID != "" {
			next[m.ID] = m
		}
	}
	var prev map[string]chat.Member
	if rr != nil {
		prev = rr.members
	}
	if len(next) == 0 {
		delete(n.rooms, room) // snapGen keeps older events out
	} else {
		n.rooms[room] = &remoteRoom{gen: snap.Gen, members: next}
	}
	return membersChanged(prev, next)
}

// applyRemoteEventLocked applies a presence event of another instance to
// the view and reports whether it is news. The caller holds r.mu.
func (r *memcachedRegistry) applyRemoteEventLocked(room string, e *logEntry) bool {
	n := r.nodeLocked(e.Node)
	rr := n.rooms[room]
	gate := n.snapGen
	if rr != nil {
		gate = max(gate, rr.gen)
	}
	if e.Gen <= gate {
		return false
	}
	if rr == nil {
		rr = &remoteRoom{members: make(map[string]chat.Member)}
		n.rooms[room] = rr
	}
	rr.gen = e.Gen
	ev := e.Event
	switch ev.Kind {
	case chat.KindJoin:
		rr.members[ev.ID] = chat.Member{ID: ev.ID, Nick: ev.Nick}
	case chat.KindLeave:
		delete(rr.members, ev.ID)
	case chat.KindNick:
		rr.members[ev.ID] = chat.Member{ID: ev.ID, Nick: ev.Nick}
	}
	return true
}

// membersChanged returns the join, leave and nick events that turn prev
// into next, in id order.
func membersChanged(prev, next map[string]chat.Member) []*chat.Event {
	var out []*chat.Event
	for id, m := range prev {
		if _, ok := next[id]; !ok {
			out = append(out, &chat.Event{Kind: chat.KindLeave, ID: id, Nick: m.Nick})
		}
	}
	for id, m := range next {
		old, ok := prev[id]
		switch {
		case !ok:
			out = append(out, &chat.Event{Kind: chat.KindJoin, ID: id, Nick: m.Nick})
		case old.Nick != m.Nick:
			out = append(out, &chat.Event{Kind: chat.KindNick, ID: id, Nick: m.Nick})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return idLess(out[i].ID, out[j].ID) })
	return out
}

// highestKnownID is the highest counter id this instance knows to be in
// use elsewhere: the floor of a re-seed of the id counter.
func (r *memcachedRegistry) highestKnownID() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var high uint64
	for _, n := range r.nodes {
		high = max(high, n.idHigh)
		for _, rr := range n.rooms {
			for id := range rr.members {
				if v, err := strconv.ParseUint(id, 10, 64); err == nil && v < fallbackIDBase {
					high = max(high, v)
				}
			}
		}
	}
	return high
}
