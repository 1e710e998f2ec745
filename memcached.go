package chatroom

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"sync"
	"time"

	"go.uber.org/zap"
)

// memcachedConfig is what the memcached registry needs from the handler.
type memcachedConfig struct {
	// Servers are the memcached addresses, host:port, in cluster order.
	Servers []string
	// Prefix namespaces every key the registry writes.
	Prefix string
	// TTL is the lifetime of this instance's keys, refreshed while it runs.
	TTL time.Duration
}

// minNodeTTL is the shortest lifetime given to an instance's snapshot:
// memcached counts expiry in whole seconds on a one-second clock, so a
// shorter one could expire between two heartbeats.
const minNodeTTL = 2 * time.Second

// maxHeartbeat bounds the presence heartbeat, so that a long ttl does not
// slow down how fast a new instance or a memcached restart is noticed.
const maxHeartbeat = 5 * time.Second

// memcachedRegistry lets several instances serve one room through a
// memcached that they share. memcached has no pub/sub and no key listing,
// so everything is found through keys the instances know (memcached_keys.go):
//
//   - ids: blocks from a counter, with a fallback range while memcached is
//     down (memcached_ids.go);
//   - events: an ordered log per room, written by a publisher goroutine from
//     a bounded outbox and polled by every instance with members in the room
//     (memcached_log.go);
//   - presence: a snapshot per instance, refreshed every heartbeat and found
//     through an index of instances; join, leave and nick events also travel
//     through the room log so that they arrive within one poll
//     (memcached_presence.go).
//
// Publish, History and RemoteMembers only touch memory: the network work is
// done by the background goroutines, which stop on Close.
type memcachedRegistry struct {
	cfg       memcachedConfig
	keys      keySchema
	client    *mcClient
	ids       *idAllocator
	hist      *embeddedRegistry // this instance's copy of each room's history
	logger    *zap.Logger
	nodeID    string
	nodeTTL   time.Duration
	heartbeat time.Duration

	host   Host
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	wakePublisher chan struct{}
	wakeHeartbeat chan struct{}

	mu           sync.Mutex
	started      bool
	closed       bool
	gen          uint64                            // counts this instance's presence changes
	local        map[string]map[string]chat.Member // this instance's members by room and id
	outbox       []outboxEntry                     // events waiting to be written to the room logs
	outboxFull   bool                              // logged once per overflow
	writing      bool                              // the publisher holds a batch taken from the outbox
	polls        map[string]*pollState             // rooms whose log this instance follows
	ownEntries   map[string][]uint64               // log entries written since the last poll, by room
	nodes        map[string]*remoteNode            // what this instance knows of the others
	lastActivity time.Time                         // of any event, local or remote: the poll speeds up
}

// newMemcachedRegistry makes the cluster registry. It does not connect:
// background work starts with the first connection (Start), so that a
// config that is only validated leaves no trace in memcached.
func newMemcachedRegistry(cfg memcachedConfig, m *metrics, logger *zap.Logger) (Registry, error) {
	client, err := newMCClient(cfg.Servers, m, logger)
	if err != nil {
		return nil, err
	}
	node, err := randomNodeID()
	if err != nil {
		return nil, err
	}
	nodeTTL := max(cfg.TTL, minNodeTTL)
	r := &memcachedRegistry{
		cfg:           cfg,
		keys:          keySchema{prefix: cfg.Prefix},
		client:        client,
		hist:          newEmbeddedRegistry(),
		logger:        logger.With(zap.String("node", node)),
		nodeID:        node,
		nodeTTL:       nodeTTL,
		heartbeat:     min(nodeTTL/3, maxHeartbeat),
		wakePublisher: make(chan struct{}, 1),
		wakeHeartbeat: make(chan struct{}, 1),
		local:         make(map[string]map[string]chat.Member),
		polls:         make(map[string]*pollState),
		ownEntries:    make(map[string][]uint64),
		nodes:         make(map[string]*remoteNode),
	}
	r.ids = &idAllocator{client: client, keys: r.keys, floor: r.highestKnownID}
	client.logger = r.logger
	client.onChange = r.reachabilityChanged
	return r, nil
}

// randomNodeID names this process in the cluster: random, so that two
// processes on one host (or a restarted one) never share keys.
func randomNodeID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("making a node id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// expirySeconds converts a lifetime to memcached's whole seconds, rounding
// up.
func expirySeconds(d time.Duration) int32 {
	return int32((d + time.Second - 1) / time.Second)
}

// Start implements Registry.
func (r *memcachedRegistry) Start(host Host) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errHubClosed
	}
	if r.started {
		return nil
	}
	r.started = true
	r.host = host
	r.ctx, r.cancel = context.WithCancel(context.Background())
	// The first heartbeat registers this instance before its first member
	// joins, so that a joiner elsewhere finds both together.
	r.mu.Unlock()
	r.beat()
	r.mu.Lock()
	r.wg.Add(3)
	go r.heartbeatLoop()
	go r.publishLoop()
	go r.pollLoop()
	return nil
}

// reachabilityChanged wakes the loops that wait for memcached to return.
func (r *memcachedRegistry) reachabilityChanged(up bool) {
	if up {
		wake(r.wakePublisher)
		wake(r.wakeHeartbeat)
	}
}

// wake signals a loop without blocking.
func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// NewID implements Registry.
func (r *memcachedRegistry) NewID(context.Context) string { return r.ids.newID() }

// KeepHistory implements Registry.
func (r *memcachedRegistry) KeepHistory(n int) { r.hist.KeepHistory(n) }

// History implements Registry.
func (r *memcachedRegistry) History(room string, n int) []*chat.Event { return r.hist.History(room, n) }

// KeepWindow implements Registry: the room log entries live at least as
// long, so that an instance that warms a room up finds them.
func (r *memcachedRegistry) KeepWindow(d time.Duration) { r.hist.KeepWindow(d) }

// Since implements Registry, from this instance's copy of the room's
// history: the poll keeps it while the instance has members in the room,
// and Warm loads the log's tail into it when it has none.
func (r *memcachedRegistry) Since(room string, after uint64) ([]*chat.Event, bool) {
	return r.hist.Since(room, after)
}

// Publish implements Registry: it records the event in memory and queues it
// for the room log.
func (r *memcachedRegistry) Publish(room string, ev *chat.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.lastActivity = time.Now()
	switch ev.Kind {
	case chat.KindChat:
		r.hist.Publish(room, ev)
		r.enqueueLocked(outboxEntry{room: room, ev: ev})
		return
	case chat.KindJoin:
		members := r.local[room]
		if members == nil {
			members = make(map[string]chat.Member)
			r.local[room] = members
		}
		members[ev.ID] = chat.Member{ID: ev.ID, Nick: ev.Nick}
	case chat.KindLeave:
		delete(r.local[room], ev.ID)
		if len(r.local[room]) == 0 {
			delete(r.local, room)
		}
	case chat.KindNick:
		if m, ok := r.local[room][ev.ID]; ok {
			m.Nick = ev.Nick
			r.local[room][ev.ID] = m
		}
	default:
		return
	}
	r.gen++
	r.enqueueLocked(outboxEntry{room: room, gen: r.gen, ev: ev})
}

// RemoteMembers implements Registry, from the view that the heartbeat and
// the room logs keep.
func (r *memcachedRegistry) RemoteMembers(room string) []chat.Member {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []chat.Member
	seen := make(map[string]bool)
	for _, n := range r.nodes {
		if n.dead {
			continue
		}
		if rr := n.rooms[room]; rr != nil {
			for id, m := range rr.members {
				if !seen[id] {
					seen[id] = true
					out = append(out, m)
				}
			}
		}
	}
	return out
}

// Warm implements Registry. When this instance has no member in room yet,
// it reads the room's presence and log position from memcached, and its
// history when history is kept, so that the joiner sees the whole cluster.
func (r *memcachedRegistry) Warm(_ context.Context, room string) {
	r.mu.Lock()
	skip := r.closed || len(r.local[room]) > 0
	r.mu.Unlock()
	if skip || !r.client.isUp() {
		return
	}
	seqKey := r.keys.seq(room)
	items, err := r.client.getMulti(append(r.knownNodeKeys(), seqKey, r.keys.nodeIndex()))
	if err != nil {
		return
	}
	live := r.applySnapshots(items, false)
	if idx := items[r.keys.nodeIndex()]; idx != nil {
		if newKeys := r.unknownNodeKeys(idx.Value); len(newKeys) > 0 {
			if more, err := r.client.getMulti(newKeys); err == nil {
				for id := range r.applySnapshots(more, false) {
					live[id] = true
				}
			}
		}
	}
	cur, hasSeq := parseCounter(items[seqKey])
	keep := int(r.hist.keep.Load())
	var tail []*logEntry
	if hasSeq {
		tail = r.loadTail(room, cur, keep)
	}
	r.deliver(room, func() []*chat.Event {
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.local[room]) > 0 {
			return nil // joined meanwhile: the poll follows the room already
		}
		// Presence changes since the snapshots were written, from
		// instances that are alive: older ones are in the snapshots, and
		// a dead instance's would bring back members that are gone.
		for _, e := range tail {
			if e.Event.Kind != chat.KindChat && e.Node != r.nodeID && live[e.Node] {
				r.applyRemoteEventLocked(room, e)
			}
		}
		st := newPollState(time.Now())
		if hasSeq {
			st.next = cur + 1
			// Kept for resumes too, when no history is: the ring drops
			// what neither needs.
			r.hist.replaceHistory(room, lastChats(tail, maxHeldEvents))
		} else {
			st.next = 1 // no log yet: whatever appears is new
		}
		r.polls[room] = st
		return nil
	})
}

// roomDeliverer is implemented by the hub: DeliverWith runs update under
// the lock that orders the room's events and then fans out what it
// returns, so that a member joining at that moment sees a remote event
// either in what it is shown on joining or live, never both or neither.
type roomDeliverer interface {
	DeliverWith(room string, update func() []*chat.Event)
}

// deliver applies update and hands its events to the local members of room.
func (r *memcachedRegistry) deliver(room string, update func() []*chat.Event) {
	switch h := r.host.(type) {
	case roomDeliverer:
		h.DeliverWith(room, update)
	case nil:
		update()
	default:
		for _, ev := range update() {
			h.Deliver(room, ev)
		}
	}
}

// Close implements Registry: it stops the background work, hands the
// leaves of members still here to the other instances, and deletes this
// instance's own keys. Shared keys (id counter, room logs, the index apart
// from this instance's entry) and anything outside the prefix stay.
func (r *memcachedRegistry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	for room, members := range r.local {
		for _, m := range members {
			r.gen++
			r.enqueueLocked(outboxEntry{room: room, gen: r.gen, ev: &chat.Event{Kind: chat.KindLeave, ID: m.ID, Nick: m.Nick}})
		}
	}
	r.local = make(map[string]map[string]chat.Member)
	started := r.started
	r.mu.Unlock()
	if !started {
		return nil
	}
	r.cancel()
	r.wg.Wait()

	r.flushOutbox()
	if err := r.client.del(r.keys.node(r.nodeID)); err != nil && !isMiss(err) {
		r.logger.Warn("deleting this instance's presence; it expires by itself", zap.Duration("ttl", r.nodeTTL), zap.Error(err))
	}
	r.leaveIndex()
	return nil
}
