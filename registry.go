package chatroom

import (
	"container/list"
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/cluster"
)

// registry is where the rooms of one instance meet the rest of the cluster:
// it hands out connection ids, keeps each room's history, and carries events
// and presence between instances. The embedded registry serves one instance;
// a cluster backend (internal/memcached) serves many.
//
// The hub calls Publish, History, Since, RemoteMembers and RemoteCount while it holds a room's
// lock, so that what a joiner is shown and what it is sent afterwards are in
// one order: those methods must answer from memory and never wait on the
// network. Warm and NewID may wait, briefly, before the lock is taken.
type registry interface {
	// Start begins background work. It is called once, before the first
	// connection joins; host is how the registry reaches the local rooms.
	Start(host cluster.Host) error
	// NewID returns a connection id that no other live connection in the
	// cluster has.
	NewID(ctx context.Context) string
	// Warm prepares the registry for a member joining room: for example it
	// loads the room's history and presence from the cluster when this
	// instance has no member there yet.
	Warm(ctx context.Context, room string)
	// CatchUp waits, briefly and at most until ctx ends, until this
	// instance has delivered room's chat messages up to seq since: a
	// client resuming here from a message another instance showed it
	// a moment ago must not be told that message is unknown.
	CatchUp(ctx context.Context, room string, since uint64)
	// Chat gives a chat message of this instance its place in the
	// room's order, cluster-wide, with the seq its frame carries, records
	// it in the room's history, and delivers it through cluster.Host.DeliverWith
	// to the room's local members but its author, once every message
	// before it in that order is delivered. It may wait on the network
	// and is called without locks.
	Chat(room string, ev *chat.Event)
	// Publish hands a presence event (join, leave, nick) that happened
	// on this instance to the other instances. Events of one room are
	// published in the order they happened.
	Publish(room string, ev *chat.Event)
	// History returns at most n of the room's latest chat events, oldest
	// first.
	History(room string, n int) []*chat.Event
	// Since returns the room's chat events held with a seq above after,
	// oldest first, for a client that resumes; complete is false when
	// some events after after may no longer be held (or after is unknown
	// here).
	Since(room string, after uint64) (events []*chat.Event, complete bool)
	// RemoteMembers returns the room's members connected to other
	// instances: all of them in a small room, a bounded sample in a big one.
	RemoteMembers(room string) []chat.Member
	// RemoteCount returns how many members the room has on other
	// instances, exact however many RemoteMembers lists.
	RemoteCount(room string) int
	// KeepHistory raises the number of chat events kept per room to at
	// least n.
	KeepHistory(n int)
	// KeepWindow raises how long chat events are kept for clients that
	// resume to at least d.
	KeepWindow(d time.Duration)
	// AcceptMessages raises the largest chat text the registry relays
	// and accepts from other instances to at least n bytes: the limit
	// that travels is the largest max_message_size of the handlers using
	// the registry, whichever of them made it.
	AcceptMessages(n int)
	// AcceptPresence raises what the registry keeps of the other
	// instances' presence, all of them together, to at least rooms rooms
	// and members listed members: the largest any handler asks for.
	AcceptPresence(rooms, members int)
	// MessageLimit is the largest chat text every instance of the
	// cluster accepts from the relay, 0 when there is no other instance:
	// a bigger message is refused to its sender rather than reach only
	// part of the room.
	MessageLimit() int
	// Close stops background work and removes what this instance left in
	// shared storage. It is called once, when the last config using the
	// registry is unloaded.
	Close() error
}

// maxIdleHistoryRooms bounds how many rooms without members keep their
// history in the embedded registry, so that a client inventing room names
// cannot grow memory without end.
const maxIdleHistoryRooms = 4096

// embeddedRegistry is the registry of a single instance: ids from a counter,
// history in memory, no remote members. A cluster backend keeps this
// instance's copy of each room's history in one (cluster.History).
type embeddedRegistry struct {
	host   cluster.Host
	lastID atomic.Uint64
	keep   atomic.Int64
	window atomic.Int64 // time.Duration; 0 until KeepWindow

	mu      sync.Mutex
	history map[string]*list.Element // of *roomHistory, most recent use at the front
	order   *list.List
}

func newEmbeddedRegistry() *embeddedRegistry {
	return &embeddedRegistry{history: make(map[string]*list.Element), order: list.New()}
}

// Start implements registry.
func (r *embeddedRegistry) Start(host cluster.Host) error {
	r.host = host
	return nil
}

// Chat implements registry: on one instance the room's lock is the order.
// The seq is stamped under it, so that seqs rise in the order members see.
func (r *embeddedRegistry) Chat(room string, ev *chat.Event) {
	r.host.DeliverWith(room, func() []*chat.Event {
		r.Publish(room, ev)
		return []*chat.Event{ev}
	})
}

// NewID implements registry.
func (r *embeddedRegistry) NewID(context.Context) string {
	return strconv.FormatUint(r.lastID.Add(1), 10)
}

// Warm implements registry.
func (r *embeddedRegistry) Warm(context.Context, string) {}

// CatchUp implements registry: one instance has delivered all it has.
func (r *embeddedRegistry) CatchUp(context.Context, string, uint64) {}

// RemoteMembers implements registry.
func (r *embeddedRegistry) RemoteMembers(string) []chat.Member { return nil }

// RemoteCount implements registry.
func (r *embeddedRegistry) RemoteCount(string) int { return 0 }

// KeepHistory implements registry.
func (r *embeddedRegistry) KeepHistory(n int) {
	for {
		cur := r.keep.Load()
		if int64(n) <= cur || r.keep.CompareAndSwap(cur, int64(n)) {
			return
		}
	}
}

// AcceptMessages implements registry: one instance relays nothing.
func (r *embeddedRegistry) AcceptMessages(int) {}

// AcceptPresence implements registry: there is no other instance.
func (r *embeddedRegistry) AcceptPresence(int, int) {}

// MessageLimit implements registry: there is no other instance.
func (r *embeddedRegistry) MessageLimit() int { return 0 }

// KeepWindow implements registry.
func (r *embeddedRegistry) KeepWindow(d time.Duration) {
	for {
		cur := r.window.Load()
		if int64(d) <= cur || r.window.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

// Window implements cluster.History: how long events are kept for clients
// that resume.
func (r *embeddedRegistry) Window() time.Duration {
	if w := time.Duration(r.window.Load()); w > 0 {
		return w
	}
	return DefaultResumeWindow
}

// Publish implements registry and cluster.History: a chat event is
// stamped with its seq, unless a relay gave it one, and kept. Presence
// events go nowhere: there is no other instance.
func (r *embeddedRegistry) Publish(room string, ev *chat.Event) {
	if ev.Kind != chat.KindChat {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.roomHistory(room, true)
	h.add(ev, time.Now(), int(r.keep.Load()), r.Window())
}

// Since implements registry.
func (r *embeddedRegistry) Since(room string, after uint64) ([]*chat.Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.roomHistory(room, false)
	if h == nil {
		return nil, false // nothing of the room in memory: not even after
	}
	h.prune(time.Now(), int(r.keep.Load()), r.Window())
	return h.since(after)
}

// MarkGap implements cluster.History: it records that chat events of room
// up to seq through (0: up to the next one) may be missing here, so that a
// resume from before it is not called complete.
func (r *embeddedRegistry) MarkGap(room string, through uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.roomHistory(room, false); h != nil {
		h.markGap(through)
	}
}

// History implements registry.
func (r *embeddedRegistry) History(room string, n int) []*chat.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.roomHistory(room, false)
	if h == nil {
		return nil
	}
	return h.latest(n)
}

// roomHistory returns the history of room and marks it recently used,
// creating it (and evicting the least recently used) when asked to.
func (r *embeddedRegistry) roomHistory(room string, create bool) *roomHistory {
	if el, ok := r.history[room]; ok {
		r.order.MoveToFront(el)
		return el.Value.(*roomHistory)
	}
	if !create {
		return nil
	}
	if r.order.Len() >= maxIdleHistoryRooms {
		oldest := r.order.Back()
		r.order.Remove(oldest)
		delete(r.history, oldest.Value.(*roomHistory).room)
	}
	h := newRoomHistory(room)
	r.history[room] = r.order.PushFront(h)
	return h
}

// Close implements registry.
func (r *embeddedRegistry) Close() error { return nil }

// Kept implements cluster.History.
func (r *embeddedRegistry) Kept() int { return int(r.keep.Load()) }

// Replace implements cluster.History: a cluster backend sets the history
// of a room this instance had no member in to what the cluster holds, as
// of the room's seq through. What came before the first event, and what
// came after the last up to through, is unknown here.
func (r *embeddedRegistry) Replace(room string, events []*chat.Event, through uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.roomHistory(room, true)
	*h = *newRoomHistory(room)
	now := time.Now()
	keep, window := int(r.keep.Load()), r.Window()
	for _, ev := range events {
		if through == 0 || ev.Seq <= through {
			h.add(ev, now, keep, window)
		}
	}
	if through > h.last {
		h.floor = through
		h.last = through
	} else if len(events) == 0 {
		h.markGap(0)
	}
}
