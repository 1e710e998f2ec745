package memcached

import (
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"go.uber.org/zap"
)

// The reading side of the relay log (log.go): the poller, which follows
// every partition and hands other instances' events to the hub.

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
				out = append(out, r.orderLocked(room, e.Event.Seq, e.Event, e.Seed, now)...)
			} else if r.view.ApplyEvent(e.Node, room, e.Gen, e.Event, now) && hosted {
				out = append(out, e.Event)
			}
		}
		return out
	})
}
