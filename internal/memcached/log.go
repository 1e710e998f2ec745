package memcached

import (
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"go.uber.org/zap"
)

// The relay log: one log for the whole cluster, split into a fixed number
// of partitions (keys.go). An event of room goes to partition
// partitionOf(room): it gets the next number of the partition's counter
// and is stored at that number with its room. Every instance polls the
// partition counters, one multi-get per server and tick whatever its
// number of rooms, fetches the new entries of the partitions that moved,
// and keeps those of the rooms it hosts. So an idle instance costs
// partitions keys per tick, and a message costs one increment and one set
// (plus the room's history when history is kept) and one read per other
// instance.
const (
	// pollFast is the poll period while events flow; pollIdle after
	// quietAfter without any. The idle period bounds what an idle
	// instance costs (partitions gets per tick); the fast one bounds
	// cross-instance latency under load.
	pollFast   = 20 * time.Millisecond
	pollIdle   = 100 * time.Millisecond
	quietAfter = 3 * time.Second

	// logGapWait is how long a number that was reserved but not written
	// (its writer died, or memcached restarted) is waited for before it
	// is given up.
	logGapWait = time.Second
	// maxPerPoll bounds the entries one poll reads per partition; a
	// reader behind by up to maxBacklog catches up over several polls,
	// one further behind (a counter that jumped ahead after a restart, or
	// forged) skips to the latest jumpWindow entries.
	maxPerPoll = 256
	maxBacklog = 8192
	jumpWindow = 16
	// startWindow is how many of each partition's latest entries an
	// instance reads when it starts, for presence changes newer than the
	// snapshots.
	startWindow = 256
	// maxPartitionCounter is the highest partition counter followed.
	// Seeds are microseconds since 1970 (about 2^51 today), so a counter
	// above it is forged: reading it, a first look's window and its
	// arithmetic would wrap at 2^64, and a writer re-seeds it.
	maxPartitionCounter = uint64(1) << 62
	// maxOutbox bounds the events held while memcached is unreachable;
	// beyond it the oldest are dropped.
	maxOutbox = 4096
	// historyTTL is how long a room's history key lives after its last
	// chat message.
	historyTTL = time.Hour
	// resumeHistoryEvents is how many of a room's latest chat events its
	// history key holds at least, whatever `history` says, so that a
	// client resuming on an instance without members in the room is
	// served from what Warm loads (one get).
	resumeHistoryEvents = 64
	// maxHistoryEvents bounds the events read from a history key.
	maxHistoryEvents = 1000
)

// outboxEntry is an event of this instance waiting for the relay log.
type outboxEntry struct {
	room string
	gen  uint64
	ev   *chat.Event // a chat event without a Seq is sequenced when written
	jump bool        // its seq starts a room counter made anew
}

// enqueueLocked adds e to the outbox and wakes the publisher. The caller
// holds r.mu.
func (r *Backend) enqueueLocked(e outboxEntry) {
	if len(r.outbox) >= maxOutbox {
		if !r.outboxFull {
			r.outboxFull = true
			r.logger.Warn("memcached outbox full: dropping the oldest events for other instances", zap.Int("max", maxOutbox))
		}
		r.outbox = r.outbox[1:]
	}
	r.outbox = append(r.outbox, e)
	wake(r.wakePublisher)
}

// requeue puts events that could not be written back at the front of the
// outbox, in order.
func (r *Backend) requeue(rest []outboxEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writing = false
	r.outbox = append(rest, r.outbox...)
	if over := len(r.outbox) - maxOutbox; over > 0 {
		r.outbox = r.outbox[over:]
	}
}

// publishLoop writes the outbox to the log as events arrive, and again
// when a server returns.
func (r *Backend) publishLoop() {
	defer r.wg.Done()
	retry := time.NewTicker(downProbe)
	defer retry.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.wakePublisher:
		case <-retry.C:
			// Events of a partition whose server is down wait in
			// the outbox; they are tried again at the probe rate.
			r.mu.Lock()
			idle := len(r.outbox) == 0
			r.mu.Unlock()
			if idle {
				continue
			}
		}
		r.flushOutbox()
	}
}

// flushOutbox writes what the outbox holds. Events of a partition whose
// server cannot be reached stay in the outbox, in order; the others go on.
func (r *Backend) flushOutbox() {
	for {
		r.mu.Lock()
		batch := r.outbox
		r.outbox = nil
		r.writing = len(batch) > 0
		if len(batch) == 0 {
			r.outboxFull = false
		}
		r.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		rest := r.publishBatch(batch)
		r.requeue(rest)
		if len(rest) > 0 {
			return
		}
	}
}

// publishBatch writes events to their partitions: per partition, one
// increment reserves numbers for all of its events, which are then written
// in order. It returns the events it could not write because their server
// is unreachable.
func (r *Backend) publishBatch(batch []outboxEntry) []outboxEntry {
	var byPart [partitions][]outboxEntry
	for _, e := range batch {
		p := partitionOf(e.room)
		byPart[p] = append(byPart[p], e)
	}
	// Each server's partitions are written by a goroutine of their own,
	// so that a frozen server's timeouts hold up only what lives on it.
	byServer := make(map[*server][]int)
	for p, events := range byPart {
		if len(events) > 0 {
			s := r.client.route(r.keys.partition(p))
			byServer[s] = append(byServer[s], p)
		}
	}
	var (
		mu        sync.Mutex
		wg        sync.WaitGroup
		rest      []outboxEntry
		chatRooms = make(map[string]bool)
	)
	for s, parts := range byServer {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range parts {
				left, rooms := r.publishPartition(s, p, byPart[p])
				mu.Lock()
				rest = append(rest, left...)
				for _, room := range rooms {
					chatRooms[room] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	keep := max(r.hist.Kept(), resumeHistoryEvents)
	for room := range chatRooms {
		r.writeHistory(room, keep)
	}
	return rest
}

// publishPartition writes the events of partition p, on server s, in
// order: one increment reserves their numbers, then one set each. It
// returns the events it could not write because s is unreachable, in
// order, and the rooms whose chat it wrote.
func (r *Backend) publishPartition(s *server, p int, events []outboxEntry) (rest []outboxEntry, chatRooms []string) {
	if !s.usable() {
		return events, nil
	}
	key := r.keys.partition(p)
	last, err := r.reserve(s, key, uint64(len(events)))
	if err != nil {
		if unavailable(err) {
			return events, nil
		}
		return nil, nil // an unusable counter: these events cannot be logged
	}
	first := last - uint64(len(events)) + 1
	for j, e := range events {
		entry := logEntry{Node: r.nodeID, Gen: e.gen, Room: e.room, Event: e.ev, Jump: e.jump}
		if e.ev.Kind == chat.KindChat && e.ev.Seq == 0 {
			// Shown here while the room's counter was away: it
			// takes its place in the room's order now.
			var ok bool
			if entry, ok = r.sequenceLate(entry); !ok {
				return events[j:], chatRooms
			}
			events[j].ev, events[j].jump = entry.Event, entry.Jump
		}
		value, err := json.Marshal(entry)
		if err != nil {
			continue
		}
		n := first + uint64(j)
		err = s.set(&memcache.Item{Key: r.keys.entry(p, n), Value: value, Expiration: expirySeconds(r.logTTL)})
		if err != nil && unavailable(err) {
			return events[j:], chatRooms
		}
		if err == nil {
			r.mu.Lock()
			if len(r.own[p]) < maxOutbox {
				r.own[p] = append(r.own[p], n)
			}
			r.mu.Unlock()
			if e.ev.Kind == chat.KindChat {
				chatRooms = append(chatRooms, e.room)
			}
		}
	}
	return nil, chatRooms
}

// reserve takes n numbers of a partition and returns the last. A missing
// counter is seeded with the current time in microseconds: above any
// number it handed out before its loss (a partition does not log a
// million events a second), so that readers never take a new entry for
// one they have seen; they skip the jump at O(1) cost (poller.wanted).
// A counter that cannot hold n more (forged near 2^64) is reset.
func (r *Backend) reserve(s *server, key string, n uint64) (uint64, error) {
	last, err := s.incr(key, n)
	if err == nil && (last < n || last > maxPartitionCounter) || err != nil && !isMiss(err) && !unavailable(err) {
		// memcached wraps counters at 2^64, and refuses to increment
		// a value that is not a number: start over from a seed.
		r.metrics.rejected("counter")
		r.logger.Warn("relay partition counter unusable: seeding it again", zap.String("key", key), zap.Error(err))
		if err = s.del(key); err == nil || isMiss(err) {
			err = memcache.ErrCacheMiss
		}
	}
	if isMiss(err) {
		seed := uint64(time.Now().UnixMicro())
		value := []byte(strconv.FormatUint(seed, 10))
		err = s.add(&memcache.Item{Key: key, Value: value})
		if err == nil {
			// The base goes on the same server as the counter (keys
			// that belong together do); a reader without it falls
			// back to a short look-back.
			_ = s.set(&memcache.Item{Key: key + ":base", Value: value})
		}
		if answer(err) {
			last, err = s.incr(key, n)
		}
	}
	if err != nil {
		return 0, err
	}
	return last, nil
}

// writeHistory stores room's latest chat events, as this instance holds
// them, for joiners on instances without members in the room: one set per
// room and batch, bounded in bytes by dropping the oldest.
func (r *Backend) writeHistory(room string, keep int) {
	events := r.hist.History(room, keep)
	value, err := json.Marshal(historyValue{Events: events})
	for err == nil && len(value) > maxHistoryBytes && len(events) > 0 {
		events = events[max(1, len(events)/4):]
		value, err = json.Marshal(historyValue{Events: events})
	}
	if err != nil {
		return
	}
	key := r.keys.history(room)
	_ = r.client.route(key).set(&memcache.Item{Key: key, Value: value, Expiration: expirySeconds(historyTTL)})
}

// partState is how far this instance has read one partition. Only the
// poller touches it.
type partState struct {
	next    uint64               // lowest number not handled yet; 0 until known
	gone    bool                 // the counter was seen missing: when it returns, its first entries are news
	old     uint64               // entries up to this one predate this instance: presence only
	done    map[uint64]bool      // numbers at or above next already handled
	missing map[uint64]time.Time // numbers found missing, since when
	// held are entries read while a lower number was still missing (its
	// writer reserved it and has not set it yet, or died): they wait, so
	// that the partition is delivered in log order. At most maxPerPoll,
	// the window wanted reads from next.
	held map[uint64]*logEntry
	// trusted is the counter when this instance last (re)started reading
	// the partition: a number above it was reserved while the instance
	// followed the partition, so an entry of it given up is a lost event;
	// one at or below it may never have been written (a seeded counter).
	trusted uint64
}

// poller follows the partitions.
type poller struct {
	r     *Backend
	parts [partitions]*partState
}

func newPoller(r *Backend) *poller {
	p := &poller{r: r}
	for i := range p.parts {
		p.parts[i] = &partState{done: make(map[uint64]bool), missing: make(map[uint64]time.Time), held: make(map[uint64]*logEntry)}
	}
	return p
}

// loop polls at pollFast while events flow and at pollIdle otherwise.
func (p *poller) loop() {
	r := p.r
	defer r.wg.Done()
	t := time.NewTimer(pollIdle)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		case <-r.wakePoller:
			// A room's order waits for a seq on its way from
			// another instance: fetch it now, not a period later.
			t.Stop() // since Go 1.23, no stale tick is left to drain
		}
		p.once(time.Now())
		r.mu.Lock()
		period := pollIdle
		if time.Since(r.lastActivity) < quietAfter {
			period = pollFast
		}
		r.mu.Unlock()
		t.Reset(period)
	}
}

// once reads the partition counters, then the new entries of those that
// moved, and delivers what other instances published.
func (p *poller) once(now time.Time) {
	r := p.r
	defer r.polls.Add(1)
	// This instance's own entries are taken before the counters are
	// read, so that each is at or below the counter read: one written in
	// between, marked done, would carry next past the counter, which
	// then looks as if it went back (and the partition is read again
	// from 16 entries back, its rooms marked as having lost messages).
	r.mu.Lock()
	own := r.own
	r.own = [partitions][]uint64{}
	r.mu.Unlock()
	counters := make(map[*server][]string)
	for i := 0; i < partitions; i++ {
		key := r.keys.partition(i)
		if s := r.client.route(key); s.usable() {
			counters[s] = append(counters[s], key)
		}
	}
	items, failed := getFrom(counters)
	r.mu.Lock()
	for room, at := range r.warm {
		if now.Sub(at) >= warmFor {
			delete(r.warm, room) // its joiner came (the room is hosted) or never will
			r.unfollowLocked(room)
		}
	}
	r.mu.Unlock()

	want := make([][]uint64, partitions)
	fetch := make(map[*server][]string)
	for i := 0; i < partitions; i++ {
		key := r.keys.partition(i)
		s := r.client.route(key)
		if counters[s] == nil || failed[key] {
			continue // not asked, or its server failed
		}
		st := p.parts[i]
		for _, n := range own[i] {
			if st.next != 0 && n >= st.next && n-st.next < maxBacklog {
				st.done[n] = true
			}
		}
		it := items[key]
		if it == nil {
			st.gone = true // lost, or not made yet: nothing new
			continue
		}
		cur, err := parseCounter(it.Value)
		if err == nil && cur > maxPartitionCounter {
			err = reject("partition counter %d over %d", cur, maxPartitionCounter)
		}
		if err != nil {
			r.metrics.rejected("counter")
			r.logger.Warn("ignoring a malformed relay counter in memcached", zap.String("key", key), zap.Error(err))
			// A writer re-seeds it: its first entries then are news.
			st.gone = true
			continue
		}
		// Past this instance's own entries first: a window of maxPerPoll
		// numbers all its own would otherwise be wanted by nobody, and the
		// partition never read past it.
		p.advance(st)
		want[i] = p.wanted(i, cur)
		for _, n := range want[i] {
			fetch[s] = append(fetch[s], r.keys.entry(i, n))
		}
	}
	// Even with nothing to fetch the loop below runs: an own entry found
	// done may free what waited above it.
	entries, failed := getFrom(fetch)
	byRoom := make(map[string][]*logEntry)
	var old []*logEntry
	var rooms []string
	for i, ns := range want {
		st := p.parts[i]
		for _, n := range ns {
			key := r.keys.entry(i, n)
			if failed[key] {
				continue // its server failed: asked again next poll
			}
			it := entries[key]
			if it == nil {
				p.noteMissing(i, st, n, now)
				continue
			}
			delete(st.missing, n)
			e, err := decodeEntry(it.Value, r.limits())
			if err != nil {
				r.metrics.rejected("entry")
				r.logger.Warn("ignoring a malformed relay entry in memcached", zap.String("key", key), zap.Error(err))
				st.done[n] = true
				continue
			}
			if e.Node == r.nodeID {
				st.done[n] = true
				continue
			}
			st.held[n] = e
		}
		// What is read goes out in log order, up to the first number
		// still missing; what lies above it waits for it.
		for ; ; st.next++ {
			if st.done[st.next] {
				delete(st.done, st.next)
				continue
			}
			e := st.held[st.next]
			if e == nil && st.next <= st.old {
				// Before this instance started: presence only, which
				// the snapshots carry too. Read once; a hole here is
				// an expired entry, not one to wait for.
				delete(st.missing, st.next)
				continue
			}
			if e == nil {
				break
			}
			delete(st.held, st.next)
			if st.next <= st.old {
				if e.Event.Kind != chat.KindChat {
					old = append(old, e)
				}
				continue
			}
			if byRoom[e.Room] == nil {
				rooms = append(rooms, e.Room)
			}
			byRoom[e.Room] = append(byRoom[e.Room], e)
		}
	}
	if len(old) > 0 {
		r.applyOld(old, now)
	}
	r.mu.Lock()
	for _, room := range rooms {
		// Chat of a room with nobody here is not news: only presence
		// goes on to keep the view, sparing the hub's locks.
		if r.orders[room] == nil {
			kept := byRoom[room][:0]
			for _, e := range byRoom[room] {
				if e.Event.Kind != chat.KindChat {
					kept = append(kept, e)
				}
			}
			byRoom[room] = kept
		}
	}
	r.mu.Unlock()
	for _, room := range rooms {
		if len(byRoom[room]) > 0 {
			r.deliverEntries(room, byRoom[room], now)
		}
	}
	r.expireWaits(now)
}

// applyOld applies presence changes published before this instance
// started, of instances whose snapshot it has read: those of a dead
// instance would bring back members that are gone. Nobody is here yet to
// be told.
func (r *Backend) applyOld(entries []*logEntry, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range entries {
		if r.view.Known(e.Node) {
			r.view.ApplyEvent(e.Node, e.Room, e.Gen, e.Event, now)
		}
	}
}

// wanted returns the numbers of partition i to fetch, now that its counter
// reads cur: at most maxPerPoll, from next on, whatever cur says.
func (p *poller) wanted(i int, cur uint64) []uint64 {
	st := p.parts[i]
	r := p.r
	switch {
	case st.next == 0 && !st.gone:
		// First look: whatever is published from now on is news. The
		// latest entries before it hold the presence changes since the
		// other instances' last snapshots: they are read once, for
		// presence only.
		p.reset(st, cur+1-min(cur, startWindow), cur)
		st.old = cur
	case st.next == 0 || st.gone:
		// The counter was missing and is back (first use, or
		// memcached restarted): its entries are news from the seed
		// its maker recorded on, at most maxPerPoll of them; without
		// a usable base, a short window.
		if st.next != 0 {
			r.markGaps(i) // it was there before: what it held is lost
		}
		st.gone = false
		p.restartAt(i, st, cur)
	case cur+1 < st.next:
		// The counter went back: it was lost and re-seeded by a
		// clock behind ours, or forged. Follow it from here.
		r.metrics.skipped(1)
		r.logger.Warn("relay partition counter went back: following it from there", zap.Int("partition", i), zap.Uint64("was", st.next-1), zap.Uint64("now", cur))
		r.markGaps(i)
		p.restartAt(i, st, cur)
	case cur >= st.next && cur-st.next >= maxBacklog:
		// Further ahead than the log is meant to be read: a re-seeded
		// counter, or a forged value.
		r.metrics.skipped(1)
		r.logger.Warn("relay partition counter jumped: reading it from its seed, or its latest entries", zap.Int("partition", i), zap.Uint64("from", st.next), zap.Uint64("to", cur))
		r.markGaps(i)
		p.restartAt(i, st, cur)
	}
	var want []uint64
	for n := st.next; n <= cur && n-st.next < maxPerPoll; n++ {
		if !st.done[n] && st.held[n] == nil {
			want = append(want, n)
		}
	}
	return want
}

// restartAt makes a reader follow partition i again after its counter was
// made anew (memcached restarted empty, or the counter was evicted or
// forged): from the seed its maker recorded, so that what writers flushed
// from their outboxes when the server returned is read, every entry of it,
// over as many polls as it takes (at most maxBacklog entries); without a
// usable seed, only the latest jumpWindow entries.
func (p *poller) restartAt(i int, st *partState, cur uint64) {
	base, ok := p.base(i, cur)
	if !ok {
		p.reset(st, cur+1-min(cur, jumpWindow), cur)
		return
	}
	p.reset(st, base+1, cur)
	st.trusted = base // every number above the seed was reserved
}

// base reads the seed partition i's counter was last made with, when it is
// a usable start for a counter that reads cur: at most cur, and not so far
// below it that the entries in between could not all be read.
func (p *poller) base(i int, cur uint64) (uint64, bool) {
	key := p.r.keys.partitionBase(i)
	s := p.r.client.route(p.r.keys.partition(i)) // where the counter lives
	if !s.usable() {
		return 0, false
	}
	it, err := s.get(key)
	if err != nil {
		return 0, false
	}
	b, err := parseCounter(it.Value)
	if err != nil || b > cur || cur-b > maxBacklog {
		p.r.metrics.rejected("counter")
		return 0, false
	}
	return b, true
}

// reset makes next the lowest number to read, forgetting what lay below;
// cur is the counter as read now.
func (p *poller) reset(st *partState, next, cur uint64) {
	st.next = next
	st.trusted = cur
	st.old = 0
	clear(st.done)
	clear(st.missing)
	clear(st.held)
}

// noteMissing records that entry n was not there; after logGapWait it is
// given up.
func (p *poller) noteMissing(part int, st *partState, n uint64, now time.Time) {
	since, ok := st.missing[n]
	switch {
	case !ok:
		st.missing[n] = now
	case now.Sub(since) >= logGapWait:
		delete(st.missing, n)
		st.done[n] = true
		p.r.metrics.skipped(1)
		if n > st.trusted {
			p.r.markGaps(part)
		}
	}
}

// markGaps tells the history of every room of partition part followed
// here that events may have been lost, so that no resume across the loss
// is called complete.
func (r *Backend) markGaps(part int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for room := range r.local {
		if partitionOf(room) == part {
			r.hist.MarkGap(room, 0)
		}
	}
	for room := range r.warm {
		if _, hosted := r.local[room]; !hosted && partitionOf(room) == part {
			r.hist.MarkGap(room, 0)
		}
	}
}

// advance moves next past the numbers handled.
func (p *poller) advance(st *partState) {
	for st.done[st.next] {
		delete(st.done, st.next)
		st.next++
	}
}

// deliverEntries hands the entries of other instances to the local members
// of room: chat messages to the room's order when it is followed here
// (hosted, or warmed for a joiner), which releases them in seq order;
// presence changes always, to keep the view, and delivered when they are
// news.
func (r *Backend) deliverEntries(room string, entries []*logEntry, now time.Time) {
	r.host.DeliverWith(room, func() []*chat.Event {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.lastActivity = now
		local := r.local[room]
		hosted := len(local) > 0
		if at, ok := r.warm[room]; ok {
			if now.Sub(at) < warmFor {
				hosted = true
			} else {
				delete(r.warm, room)
				r.unfollowLocked(room)
			}
		}
		var out []*chat.Event
		for _, e := range entries {
			if _, mine := local[e.Event.ID]; mine {
				// Another instance cannot speak for a member of
				// this one: a forged entry.
				r.metrics.rejected("entry")
				r.logger.Warn("ignoring a relay entry about a member of this instance", zap.String("room", room), zap.String("from_node", e.Node), zap.String("id", e.Event.ID))
				continue
			}
			if e.Event.Kind == chat.KindChat {
				if e.Event.Seq == 0 || e.Event.Seq > seqLimit(now) {
					// Every relayed message has its room's seq,
					// which never runs ahead of the clock.
					r.metrics.rejected("entry")
					r.logger.Warn("ignoring a relayed chat message without a usable seq", zap.String("room", room), zap.String("from_node", e.Node), zap.Uint64("seq", e.Event.Seq))
					continue
				}
				out = append(out, r.orderLocked(room, e.Event.Seq, e.Event, e.Jump, now)...)
			} else if r.view.ApplyEvent(e.Node, room, e.Gen, e.Event, now) && hosted {
				out = append(out, e.Event)
			}
		}
		return out
	})
}
