// Package memcached is a cluster backend over memcached servers that the
// instances share: connection ids from a counter, a relay log split into a
// fixed number of partitions that every instance polls, chunked presence
// snapshots, and per-room history for joiners on instances that had no
// member in the room. memcached has no pub/sub and no key listing, so
// everything is found through keys the instances know (keys.go), and every
// value read back is checked as input (decode.go).
package memcached

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/cluster"
	"go.uber.org/zap"
)

// Config is what the backend needs from the handler.
type Config struct {
	// Servers are the memcached addresses, host:port, in cluster order:
	// every instance must list the same servers in the same order.
	Servers []string
	// Prefix namespaces every key the backend writes.
	Prefix string
	// TTL is the lifetime of this instance's keys, refreshed while it runs.
	TTL time.Duration
	// MaxMessageSize caps the chat text accepted from other instances.
	MaxMessageSize int
	// ResumeWindow is how long relay log entries are kept at least; 0
	// means DefaultResumeWindow.
	ResumeWindow time.Duration
	// ListCap bounds the members of another instance listed per room; 0
	// means cluster.DefaultListCap. Counts stay exact beyond it.
	ListCap int
	// History is this instance's copy of each room's chat history.
	History cluster.History
	// Metrics receives request, error and rejected-value counts; nil
	// reports nothing.
	Metrics *Metrics
}

// DefaultResumeWindow is the relay log entries' lifetime when none is
// configured.
const DefaultResumeWindow = 2 * time.Minute

// minNodeTTL is the shortest lifetime given to an instance's snapshot:
// memcached counts expiry in whole seconds on a one-second clock, so a
// shorter one could expire between two heartbeats.
const minNodeTTL = 2 * time.Second

// maxHeartbeat bounds the presence heartbeat, so that a long ttl does not
// slow down how fast a new instance or a memcached restart is noticed.
const maxHeartbeat = 5 * time.Second

// deadNodeMemory is how long a dead instance's generation is remembered,
// so that its late events are not taken for news.
const deadNodeMemory = 10 * time.Minute

// startWait bounds how long Start holds up the first join for the first
// heartbeat and poll.
const startWait = 2 * time.Second

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("memcached backend closed")

// Backend joins this instance to the others through memcached. Publish,
// History, RemoteMembers and RemoteCount only touch memory: the network
// work is done by background goroutines (heartbeat, publisher, poller),
// which stop on Close.
type Backend struct {
	cfg        Config
	maxMessage atomic.Int64 // the largest chat text relayed (AcceptMessages)
	keys       keySchema
	client     *client
	ids        *idAllocator
	hist       cluster.History
	metrics    *Metrics
	logger     *zap.Logger
	nodeID     string
	nodeTTL    time.Duration
	heartbeat  time.Duration
	logTTL     time.Duration

	host   cluster.Host
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	beats atomic.Uint64 // heartbeats made, for tests that wait for some
	polls atomic.Uint64 // polls made, likewise

	wakePublisher chan struct{}
	wakeHeartbeat chan struct{}
	wakePoller    chan struct{}
	advanced      *sync.Cond // on mu: a room's order released messages

	mu              sync.Mutex
	started         bool
	closed          bool
	gen             uint64                            // counts this instance's presence changes
	local           map[string]map[string]chat.Member // this instance's members by room and id
	outbox          []outboxEntry                     // events waiting for the relay log
	outboxFull      bool                              // logged once per overflow
	writing         bool                              // the publisher holds a batch taken from the outbox
	own             [partitions][]uint64              // entries written since the last poll
	warm            map[string]time.Time              // rooms prepared by Warm for a joiner on its way
	orders          map[string]*cluster.Orderer       // the chat order of each room hosted or warm (order.go)
	waiting         map[string]bool                   // rooms whose order holds messages for a lower seq
	acceptOf        map[string]int                    // the largest chat text each other instance accepts
	presenceSet     bool                              // AcceptPresence was called
	lostLoggedAt    time.Time                         // when given-up seqs were last logged
	lostUnlogged    uint64                            // seqs given up since, not logged
	unorderedLogged bool                              // the first chat without a seq was logged
	view            *cluster.View                     // the other instances' members
	idHigh          map[string]uint64                 // highest counter id each instance obtained
	lastActivity    time.Time                         // of any event, local or remote: the poll speeds up
	chunksOut       int                               // most chunks this instance wrote, deleted on Close
	written         lastWritten                       // the snapshot last written
}

// New makes the backend. It does not connect: background work starts with
// Start, so that a config that is only validated leaves no trace in
// memcached.
func New(cfg Config, logger *zap.Logger) (*Backend, error) {
	if cfg.History == nil {
		return nil, errors.New("memcached backend: no history store")
	}
	if cfg.MaxMessageSize <= 0 {
		return nil, fmt.Errorf("memcached backend: max message size %d", cfg.MaxMessageSize)
	}
	if cfg.ResumeWindow <= 0 {
		cfg.ResumeWindow = DefaultResumeWindow
	}
	client, err := newClient(cfg.Servers, cfg.Metrics, logger)
	if err != nil {
		return nil, err
	}
	node, err := randomNodeID()
	if err != nil {
		return nil, err
	}
	nodeTTL := max(cfg.TTL, minNodeTTL)
	heartbeat := min(nodeTTL/3, maxHeartbeat)
	r := &Backend{
		cfg:           cfg,
		keys:          keySchema{prefix: cfg.Prefix},
		client:        client,
		hist:          cfg.History,
		metrics:       cfg.Metrics,
		logger:        logger.With(zap.String("node", node)),
		nodeID:        node,
		nodeTTL:       nodeTTL,
		heartbeat:     heartbeat,
		logTTL:        max(cfg.ResumeWindow, DefaultResumeWindow),
		wakePublisher: make(chan struct{}, 1),
		wakeHeartbeat: make(chan struct{}, 1),
		wakePoller:    make(chan struct{}, 1),
		orders:        make(map[string]*cluster.Orderer),
		waiting:       make(map[string]bool),
		local:         make(map[string]map[string]chat.Member),
		warm:          make(map[string]time.Time),
		view:          cluster.NewView(cfg.ListCap, heartbeat+downProbe, deadNodeMemory),
		idHigh:        make(map[string]uint64),
		acceptOf:      make(map[string]int),
		written:       lastWritten{chunks: -1},
	}
	r.maxMessage.Store(int64(cfg.MaxMessageSize))
	r.advanced = sync.NewCond(&r.mu)
	r.view.Local = r.isLocalLocked
	r.view.Followed = r.followedLocked
	r.ids = &idAllocator{server: client.route(r.keys.idCounter()), key: r.keys.idCounter(), floor: r.highestKnownID, taken: r.idListed}
	client.logger = r.logger
	client.onChange = r.serverChanged
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

// NodeID is this instance's name in the cluster.
func (r *Backend) NodeID() string { return r.nodeID }

// expirySeconds converts a lifetime to memcached's whole seconds, rounding
// up.
func expirySeconds(d time.Duration) int32 {
	return int32((d + time.Second - 1) / time.Second)
}

// Start begins background work; host is how the backend reaches the local
// rooms.
func (r *Backend) Start(host cluster.Host) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if r.started {
		return nil
	}
	r.started = true
	r.host = host
	r.ctx, r.cancel = context.WithCancel(context.Background())
	// The first heartbeat registers this instance before its first member
	// joins, so that a joiner elsewhere finds both together; the first
	// poll learns where the partitions stand, so that what is published
	// from now on is news. Both wait at most startWait: whatever memcached
	// holds or however slowly it answers, the first joiners go on, and
	// the relay catches up in the background. What they publish meanwhile
	// waits in the outbox.
	ready := make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.beat()
		p := newPoller(r)
		p.once(time.Now())
		close(ready)
		r.wg.Add(3)
		go r.heartbeatLoop()
		go r.publishLoop()
		go p.loop()
	}()
	r.mu.Unlock()
	t := time.NewTimer(startWait)
	defer t.Stop()
	select {
	case <-ready:
	case <-t.C:
		r.logger.Warn("memcached backend still starting: joins go on, the relay catches up", zap.Duration("after", startWait))
	}
	r.mu.Lock()
	return nil
}

// serverChanged wakes the loops that wait for a server to return.
func (r *Backend) serverChanged(_ string, up bool) {
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

// NewID returns a connection id that no other live connection in the
// cluster has. It waits for memcached at most until ctx ends.
func (r *Backend) NewID(ctx context.Context) string { return r.ids.newID(ctx) }

// KeepHistory raises the number of chat events kept per room.
func (r *Backend) KeepHistory(n int) { r.hist.KeepHistory(n) }

// AcceptMessages raises the largest chat text relayed and accepted from
// other instances to at least n bytes. Every handler on the registry calls
// it, so the largest max_message_size among them is the cluster's limit
// here, whichever handler made the backend.
func (r *Backend) AcceptMessages(n int) {
	for {
		cur := r.maxMessage.Load()
		if int64(n) <= cur || r.maxMessage.CompareAndSwap(cur, int64(n)) {
			return
		}
	}
}

// AcceptPresence raises what the view keeps of the other instances'
// presence, all of them together, to at least rooms rooms and members
// listed members (the view caps both at cluster.MaxRooms and MaxMembers).
// The first call sets them: the backend starts at the maxima only for
// handlers that ask for nothing.
func (r *Backend) AcceptPresence(rooms, members int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.presenceSet {
		r.presenceSet = true
		r.view.RoomCap, r.view.MemberCap = rooms, members
		return
	}
	r.view.RoomCap = max(r.view.RoomCap, rooms)
	r.view.MemberCap = max(r.view.MemberCap, members)
}

// The limits other instances publish are believed within these bounds: a
// forged 1 would otherwise refuse every message of the cluster.
const (
	minAcceptedLimit = 1 << 10
	maxAcceptedLimit = 1 << 30
)

// MessageLimit is the largest chat text every instance known to be alive
// accepts from the relay, this one included: a bigger message would reach
// only some of the room, so its sender is refused instead.
func (r *Backend) MessageLimit() int {
	limit := int(r.maxMessage.Load())
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.acceptOf {
		limit = min(limit, n)
	}
	return limit
}

// limits are the decoding bounds now.
func (r *Backend) limits() limits { return limits{maxMessage: int(r.maxMessage.Load())} }

// History returns at most n of room's latest chat events, oldest first.
func (r *Backend) History(room string, n int) []*chat.Event { return r.hist.History(room, n) }

// KeepWindow raises how long chat events are kept for resumes.
func (r *Backend) KeepWindow(d time.Duration) { r.hist.KeepWindow(d) }

// Since returns the chat events of room after seq after, from this
// instance's copy of the room's history: the relay keeps it while the
// instance has members in the room, and Warm loads it from memcached when
// it has none.
func (r *Backend) Since(room string, after uint64) ([]*chat.Event, bool) {
	return r.hist.Since(room, after)
}

// Publish queues a presence event of this instance (join, leave, nick)
// for the relay log. Chat goes through Chat, which orders it.
func (r *Backend) Publish(room string, ev *chat.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.lastActivity = time.Now()
	switch ev.Kind {
	case chat.KindJoin:
		members := r.local[room]
		if members == nil {
			members = make(map[string]chat.Member)
			r.local[room] = members
		}
		members[ev.ID] = ev.Member()
		if r.orders[room] == nil {
			// Warm did not prepare the room (the backend was
			// still starting): the first seq seen starts it.
			r.followLocked(room).Start(0, false, time.Now())
		}
	case chat.KindLeave:
		delete(r.local[room], ev.ID)
		if len(r.local[room]) == 0 {
			delete(r.local, room)
			r.unfollowLocked(room)
		}
	case chat.KindNick:
		if _, ok := r.local[room][ev.ID]; ok {
			r.local[room][ev.ID] = ev.Member()
		}
	default:
		return
	}
	r.gen++
	r.enqueueLocked(outboxEntry{room: room, gen: r.gen, ev: ev})
}

// RemoteMembers returns room's members on other instances: all of them in
// rooms of up to ListCap members per instance, a bounded sample beyond.
func (r *Backend) RemoteMembers(room string) []chat.Member {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.view.Members(room)
}

// RemoteCount returns how many members room has on other instances.
func (r *Backend) RemoteCount(room string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.view.Count(room)
}

// warmFor is how long the poll keeps the chat of a room that Warm
// prepared, for a joiner on its way.
const warmFor = 10 * time.Second

// Warm prepares the backend for a member joining room. When this instance
// does not follow the room yet, it starts the room's order where the
// room's seq counter stands, and loads the room's history from memcached
// (two gets), so that the joiner sees what was said elsewhere and then
// every message after it, in the room's order.
func (r *Backend) Warm(ctx context.Context, room string) {
	r.mu.Lock()
	skip := r.closed || !r.started || len(r.local[room]) > 0
	if !skip {
		r.warm[room] = time.Now()
		// Made before the reads, so that what the poller brings
		// meanwhile is held, not lost: Start sorts it out.
		skip = r.followLocked(room).Started()
	}
	r.mu.Unlock()
	if skip {
		return
	}
	// The history first: every message in it took its seq before the
	// counter is read, so the counter is at or above the history's last.
	var events []*chat.Event
	if ctx.Err() == nil {
		r.fillRoom(room)
		events = r.loadHistory(room)
	}
	now := time.Now()
	var after uint64
	var known bool
	if ctx.Err() == nil {
		after, known = r.startSeq(room, now)
	}
	r.host.DeliverWith(room, func() []*chat.Event {
		r.mu.Lock()
		defer r.mu.Unlock()
		o := r.orders[room]
		if o == nil || o.Started() {
			return nil
		}
		if len(r.local[room]) == 0 {
			if !known && len(events) > 0 {
				after, known = events[len(events)-1].Seq, true
			}
			r.hist.Replace(room, events, after)
		}
		return r.releasedLocked(room, o, o.Start(after, known, now))
	})
}

// loadHistory reads room's latest chat events from memcached; nil when
// there are none or they cannot be read.
func (r *Backend) loadHistory(room string) []*chat.Event {
	key := r.keys.history(room)
	s := r.client.route(key)
	if !s.usable() {
		return nil
	}
	it, err := s.get(key)
	if err != nil {
		return nil
	}
	events, dropped, err := decodeHistory(it.Value, r.limits(), maxHistoryEvents)
	if err != nil {
		r.metrics.rejected("history")
		r.logger.Warn("ignoring a malformed room history in memcached", zap.String("key", key), zap.Error(err))
		return nil
	}
	if dropped > 0 {
		for range dropped {
			r.metrics.rejected("history")
		}
		r.logger.Warn("dropping room history entries without a seq from memcached", zap.String("key", key), zap.Int("dropped", dropped))
	}
	return events
}

// Close stops the background work, hands the leaves of members still here
// to the other instances, and deletes this instance's own keys. Shared keys
// (id counter, partitions, histories, the index apart from this instance's
// entry) and anything outside the prefix stay.
func (r *Backend) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	for room, members := range r.local {
		for _, m := range members {
			r.gen++
			r.enqueueLocked(outboxEntry{room: room, gen: r.gen, ev: chat.NewPresence(chat.KindLeave, m)})
		}
	}
	r.local = make(map[string]map[string]chat.Member)
	started := r.started
	chunks := r.chunksOut
	r.mu.Unlock()
	if !started {
		return nil
	}
	r.cancel()
	r.wg.Wait()

	r.flushOutbox()
	head := r.keys.node(r.nodeID)
	s := r.client.route(head)
	if err := s.del(head); err != nil && !isMiss(err) {
		r.logger.Warn("deleting this instance's presence; it expires by itself", zap.Duration("ttl", r.nodeTTL), zap.Error(err))
	}
	for i := 0; i < chunks; i++ {
		_ = s.del(r.keys.chunk(r.nodeID, i))
	}
	r.leaveIndex()
	return nil
}

// highestKnownID is the highest counter id this instance knows to be in
// use elsewhere: no block of the id counter starts at or below it.
func (r *Backend) highestKnownID() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	high := r.view.HighestID(fallbackIDBase)
	for _, h := range r.idHigh {
		if h < fallbackIDBase {
			high = max(high, h)
		}
	}
	return high
}

// idListed reports whether a member of another instance has id.
func (r *Backend) idListed(id uint64) bool {
	s := strconv.FormatUint(id, 10)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.view.Listed(s)
}

// isLocalLocked reports whether id is a member of this instance in room.
// The caller holds r.mu, as every user of the view does.
func (r *Backend) isLocalLocked(room, id string) bool {
	_, ok := r.local[room][id]
	return ok
}

// followedLocked reports whether this instance follows room: it has
// members there, or Warm prepared it for one on its way. The caller holds
// r.mu.
func (r *Backend) followedLocked(room string) bool {
	if len(r.local[room]) > 0 {
		return true
	}
	at, ok := r.warm[room]
	return ok && time.Since(at) < warmFor
}
