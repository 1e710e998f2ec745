package chatroom

import (
	"container/list"
	"context"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/cluster"
	"strconv"
	"sync"
	"sync/atomic"
)

// Registry is where the rooms of one instance meet the rest of the cluster:
// it hands out connection ids, keeps each room's history, and carries events
// and presence between instances. The embedded registry serves one instance;
// a cluster backend (internal/memcached) serves many.
//
// The hub calls Publish, History and RemoteMembers while it holds a room's
// lock, so that what a joiner is shown and what it is sent afterwards are in
// one order: those methods must answer from memory and never wait on the
// network. Warm and NewID may wait, briefly, before the lock is taken.
type Registry interface {
	// Start begins background work. It is called once, before the first
	// connection joins; host is how the registry reaches the local rooms.
	Start(host Host) error
	// NewID returns a connection id that no other live connection in the
	// cluster has.
	NewID(ctx context.Context) string
	// Warm prepares the registry for a member joining room: for example it
	// loads the room's history and presence from the cluster when this
	// instance has no member there yet.
	Warm(ctx context.Context, room string)
	// Publish hands an event that happened on this instance to the other
	// instances, and records chat events in the room's history. Events of
	// one room are published in the order they happened.
	Publish(room string, ev *chat.Event)
	// History returns at most n of the room's latest chat events, oldest
	// first.
	History(room string, n int) []*chat.Event
	// RemoteMembers returns the room's members connected to other instances.
	RemoteMembers(room string) []chat.Member
	// KeepHistory raises the number of chat events kept per room to at
	// least n.
	KeepHistory(n int)
	// Close stops background work and removes what this instance left in
	// shared storage. It is called once, when the last config using the
	// registry is unloaded.
	Close() error
}

// Host is the local side of a registry: the hub. A cluster backend hands
// it what happened on other instances.
type Host = cluster.Handler

// maxIdleHistoryRooms bounds how many rooms without members keep their
// history in the embedded registry, so that a client inventing room names
// cannot grow memory without end.
const maxIdleHistoryRooms = 4096

// embeddedRegistry is the registry of a single instance: ids from a counter,
// history in memory, no remote members. A cluster backend keeps this
// instance's copy of each room's history in one (cluster.History).
type embeddedRegistry struct {
	lastID atomic.Uint64
	keep   atomic.Int64

	mu      sync.Mutex
	history map[string]*list.Element // of *roomHistory, most recent use at the front
	order   *list.List
}

type roomHistory struct {
	room   string
	events []*chat.Event // ring buffer
	next   int
	full   bool
}

func newEmbeddedRegistry() *embeddedRegistry {
	return &embeddedRegistry{history: make(map[string]*list.Element), order: list.New()}
}

// Start implements Registry.
func (r *embeddedRegistry) Start(Host) error { return nil }

// NewID implements Registry.
func (r *embeddedRegistry) NewID(context.Context) string {
	return strconv.FormatUint(r.lastID.Add(1), 10)
}

// Warm implements Registry.
func (r *embeddedRegistry) Warm(context.Context, string) {}

// RemoteMembers implements Registry.
func (r *embeddedRegistry) RemoteMembers(string) []chat.Member { return nil }

// KeepHistory implements Registry.
func (r *embeddedRegistry) KeepHistory(n int) {
	for {
		cur := r.keep.Load()
		if int64(n) <= cur || r.keep.CompareAndSwap(cur, int64(n)) {
			return
		}
	}
}

// Publish implements Registry.
func (r *embeddedRegistry) Publish(room string, ev *chat.Event) {
	keep := int(r.keep.Load())
	if ev.Kind != chat.KindChat || keep == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.roomHistory(room, true)
	h.add(ev, keep)
}

// History implements Registry.
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
	h := &roomHistory{room: room}
	r.history[room] = r.order.PushFront(h)
	return h
}

// Close implements Registry.
func (r *embeddedRegistry) Close() error { return nil }

// Kept implements cluster.History.
func (r *embeddedRegistry) Kept() int { return int(r.keep.Load()) }

// Replace implements cluster.History: a cluster backend sets the history
// of a room this instance had no member in to what the cluster holds.
func (r *embeddedRegistry) Replace(room string, events []*chat.Event) {
	keep := int(r.keep.Load())
	if keep == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.roomHistory(room, true)
	*h = roomHistory{room: room}
	for _, ev := range events {
		h.add(ev, keep)
	}
}

// add appends ev, keeping the last keep events.
func (h *roomHistory) add(ev *chat.Event, keep int) {
	if len(h.events) != keep {
		h.resize(keep)
	}
	h.events[h.next] = ev
	h.next = (h.next + 1) % keep
	if h.next == 0 {
		h.full = true
	}
}

// resize changes the ring's capacity, keeping the latest events.
func (h *roomHistory) resize(keep int) {
	latest := h.latest(keep)
	h.events = make([]*chat.Event, keep)
	copy(h.events, latest)
	h.next = len(latest) % keep
	h.full = len(latest) == keep
}

// latest returns at most n events, oldest first.
func (h *roomHistory) latest(n int) []*chat.Event {
	var ordered []*chat.Event
	if h.full {
		ordered = append(append(ordered, h.events[h.next:]...), h.events[:h.next]...)
	} else {
		ordered = append(ordered, h.events[:h.next]...)
	}
	if len(ordered) > n {
		ordered = ordered[len(ordered)-n:]
	}
	return ordered
}
