package memcached

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/cluster"
	"go.uber.org/zap"
)

// One order per room (see cluster.Orderer). A chat message of this
// instance takes its seq from the room's counter, <prefix>seq:<room>, with
// one increment, and goes to the room's Orderer with the messages the
// poller brings from other instances; what the Orderer releases is what
// local members see, in the order every instance shows. The relay log
// carries the message with its seq; its own numbers only order the log.
//
// Cost per message: one increment more than before, on the server of the
// room's partition; nothing more per reader. A local message waits for
// nothing unless a lower seq is still on its way from another instance, in
// which case the poller is woken to fetch it at once.

// maxSeqAhead is how far ahead of this instance's clock a seq may be.
// Counters are seeded with the clock in microseconds and rise by one per
// message, so a seq ahead of the clock is forged (or wrapped): followed,
// it would stop the room's seqs from rising. It matches how far ahead a
// client's `since` may be.
const maxSeqAhead = time.Minute

// errServerAway is returned when the server of a room's counter is known
// to be down and not due for a probe.
var errServerAway = errors.New("memcached server of the room's seq counter is away")

// seqLimit is the highest seq accepted now.
func seqLimit(now time.Time) uint64 { return uint64(max(now.Add(maxSeqAhead).UnixMicro(), 1)) }

// seqServer is where room's counter lives: with its partition.
func (r *Backend) seqServer(room string) *server {
	return r.client.route(r.keys.partition(partitionOf(room)))
}

// Chat gives a chat message of this instance its seq and hands it to the
// room's order, which delivers it to the local members (but its author)
// once every lower seq is delivered. It waits for one memcached round trip
// and is called without locks. When the counter's server is away, local
// members get the message at once, without a seq, and the relay gives it
// one when the server returns.
func (r *Backend) Chat(room string, ev *chat.Event) {
	now := time.Now()
	r.mu.Lock()
	closed := r.closed
	r.lastActivity = now
	var floor uint64
	if o := r.orders[room]; o != nil {
		floor = o.Next()
	}
	r.mu.Unlock()
	if closed {
		r.host.DeliverWith(room, func() []*chat.Event { return []*chat.Event{ev} })
		return
	}
	seq, seed, err := r.sequence(room, floor, now)
	if err != nil {
		r.chatUnordered(room, ev, err)
		return
	}
	ev.Seq = seq
	waiting := false
	r.host.DeliverWith(room, func() []*chat.Event {
		r.mu.Lock()
		defer r.mu.Unlock()
		if !r.closed {
			r.enqueueLocked(outboxEntry{room: room, ev: ev, seed: seed})
		}
		out := r.orderLocked(room, seq, ev, seed, now)
		waiting = r.waiting[room]
		return out
	})
	if waiting {
		wake(r.wakePoller) // a lower seq is on its way: fetch it now
	}
}

// chatUnordered delivers ev to the local members without a seq, and queues
// it for the relay, which sequences it when the counter's server returns.
// A resume across it is not called complete here.
func (r *Backend) chatUnordered(room string, ev *chat.Event, cause error) {
	r.host.DeliverWith(room, func() []*chat.Event {
		r.mu.Lock()
		defer r.mu.Unlock()
		if !r.unorderedLogged {
			r.unorderedLogged = true
			r.logger.Warn("room seq counter unreachable: chat delivered here without a seq, relayed when its server returns", zap.String("room", room), zap.Error(cause))
		}
		r.enqueueLocked(outboxEntry{room: room, ev: ev})
		r.hist.MarkGap(room, 0)
		return []*chat.Event{ev}
	})
}

// sequence takes the next seq of room's counter. floor is the seq this
// instance's order of the room releases next (0 when it does not follow
// the room): a counter below it went back (set back, or made anew by a
// clock behind this one) and is moved above it. seed, when not 0, reports
// that the counter was made anew from it (see cluster.Entry.Seed).
func (r *Backend) sequence(room string, floor uint64, now time.Time) (seq, seed uint64, err error) {
	key := r.keys.seq(room)
	s := r.seqServer(room)
	if !s.usable() {
		return 0, 0, errServerAway
	}
	seq, err = s.incr(key, 1)
	if err == nil && seq > seqLimit(now) || err != nil && !isMiss(err) && !unavailable(err) {
		// memcached refuses to increment a value that is not a
		// number; one ahead of the clock is forged. Start over.
		r.metrics.rejected("counter")
		r.logger.Warn("room seq counter unusable: seeding it again", zap.String("key", key), zap.Uint64("value", seq), zap.Error(err))
		if err = s.del(key); err == nil || isMiss(err) {
			err = memcache.ErrCacheMiss
		}
	}
	if isMiss(err) {
		made := max(uint64(max(now.UnixMicro(), 1)), floor)
		err = s.add(&memcache.Item{Key: key, Value: []byte(strconv.FormatUint(made, 10)), Expiration: expirySeconds(historyTTL)})
		if err == nil {
			seed = made // this writer made the counter: up to the seed, nothing comes
		}
		if answer(err) {
			seq, err = s.incr(key, 1)
		}
	}
	if err != nil {
		return 0, 0, err
	}
	if floor > 0 && seq < floor {
		r.metrics.rejected("counter")
		r.logger.Warn("room seq counter went back: moving it above the seqs this instance delivered", zap.String("key", key), zap.Uint64("was", seq), zap.Uint64("floor", floor))
		if seq, err = s.incr(key, floor-seq); err != nil {
			return 0, 0, err
		}
		seed = floor - 1
	}
	if seq == 0 || seq > cluster.MaxSeq {
		return 0, 0, reject("room seq %d", seq)
	}
	// A busy room keeps its counter; an idle one lets it expire with its
	// history, and the next writer seeds it from the clock, above it.
	if seq%256 == 0 {
		_ = s.touch(key, expirySeconds(historyTTL))
	}
	return seq, seed, nil
}

// startSeq reads where room's counter stands, for an order that starts
// following the room; a missing counter is made, so that every instance
// that follows the room from now on agrees where it starts. known is
// false when the server cannot tell.
func (r *Backend) startSeq(room string, now time.Time) (after uint64, known bool) {
	key := r.keys.seq(room)
	s := r.seqServer(room)
	if !s.usable() {
		return 0, false
	}
	for range 2 {
		it, err := s.get(key)
		if err == nil {
			n, err := parseCounter(it.Value)
			if err != nil || n > seqLimit(now) || n > cluster.MaxSeq {
				r.metrics.rejected("counter")
				return 0, false // the next writer seeds it again
			}
			return n, true
		}
		if !isMiss(err) {
			return 0, false
		}
		seed := uint64(max(now.UnixMicro(), 1))
		err = s.add(&memcache.Item{Key: key, Value: []byte(strconv.FormatUint(seed, 10)), Expiration: expirySeconds(historyTTL)})
		if err == nil {
			return seed, true
		}
		if !answer(err) {
			return 0, false
		}
		// Another instance made it first: read what it made.
	}
	return 0, false
}

// orderLocked hands the room's order a message (or, with ev nil, marks seq
// as delivered here) and returns what it releases, recorded in the
// history. The caller holds r.mu, inside DeliverWith.
func (r *Backend) orderLocked(room string, seq uint64, ev *chat.Event, seed uint64, now time.Time) []*chat.Event {
	o := r.orders[room]
	if o == nil {
		return nil // not followed here: no member, no joiner on its way
	}
	return r.releasedLocked(room, o, o.Add(seq, ev, seed, now))
}

// releasedLocked records what o released in the history, reports seqs
// given up, and notes whether o still waits. The caller holds r.mu.
func (r *Backend) releasedLocked(room string, o *cluster.Orderer, rel cluster.Released) []*chat.Event {
	for _, ev := range rel.Events {
		r.hist.Publish(room, ev)
	}
	if rel.Lost > 0 {
		r.metrics.lost(rel.Lost)
		r.hist.MarkGap(room, rel.LostThrough)
		r.logLostLocked(room, rel)
	}
	if o.Waiting() {
		r.waiting[room] = true
	} else {
		delete(r.waiting, room)
	}
	if len(rel.Events) > 0 || rel.Lost > 0 {
		r.advanced.Broadcast()
	}
	return rel.Events
}

// followLocked makes room's order when there is none: the room is hosted
// here, or a joiner is on its way. The caller holds r.mu.
func (r *Backend) followLocked(room string) *cluster.Orderer {
	o := r.orders[room]
	if o == nil {
		o = cluster.NewOrderer()
		r.orders[room] = o
	}
	return o
}

// unfollowLocked drops room's order when nobody here needs it any more.
// The caller holds r.mu.
func (r *Backend) unfollowLocked(room string) {
	if len(r.local[room]) == 0 && r.warm[room].IsZero() {
		delete(r.orders, room)
		delete(r.waiting, room)
	}
}

// expireWaits gives up the seqs that rooms' orders have waited for too
// long, delivering what waited behind them.
func (r *Backend) expireWaits(now time.Time) {
	r.mu.Lock()
	rooms := make([]string, 0, len(r.waiting))
	for room := range r.waiting {
		rooms = append(rooms, room)
	}
	r.mu.Unlock()
	for _, room := range rooms {
		r.host.DeliverWith(room, func() []*chat.Event {
			r.mu.Lock()
			defer r.mu.Unlock()
			o := r.orders[room]
			if o == nil {
				delete(r.waiting, room)
				return nil
			}
			return r.releasedLocked(room, o, o.Expire(now, cluster.GapWait))
		})
	}
}

// sequenceLate gives a chat entry shown here without a seq (its counter's
// server was away) its seq now, and marks the seq delivered in this
// instance's order. ok is false when the server is still away: the entry
// waits in the outbox.
func (r *Backend) sequenceLate(e logEntry) (logEntry, bool) {
	now := time.Now()
	r.mu.Lock()
	var floor uint64
	if o := r.orders[e.Room]; o != nil {
		floor = o.Next()
	}
	r.mu.Unlock()
	seq, seed, err := r.sequence(e.Room, floor, now)
	if err != nil {
		return e, false
	}
	ev := *e.Event // the one shown here stays as it was shown
	ev.Seq = seq
	e.Event, e.Seed = &ev, seed
	r.host.DeliverWith(e.Room, func() []*chat.Event {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.orderLocked(e.Room, seq, nil, seed, now)
	})
	return e, true
}

// CatchUp waits until room's order has released the message with seq
// since, at most GapWait and until ctx ends: a client that resumes here
// from a message it got on another instance a moment ago would otherwise
// be told that message is unknown, and its resume incomplete. A since far
// ahead of the room's order (from another epoch, or made up) is not
// waited for.
func (r *Backend) CatchUp(ctx context.Context, room string, since uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	behind := func() bool {
		o := r.orders[room]
		return o != nil && o.Started() && o.Next() != 0 && o.Next() <= since && since-o.Next() < cluster.MaxHeldPerRoom
	}
	if !behind() {
		return
	}
	wake(r.wakePoller)
	ctx, cancel := context.WithTimeout(ctx, cluster.GapWait)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.advanced.Broadcast()
	})
	defer stop()
	for behind() && ctx.Err() == nil {
		r.advanced.Wait()
	}
}

// lostLogEvery bounds how often given-up seqs are logged: a memcached
// restart under traffic gives up a seq per message for a while, and one
// line per loss would flood the log. The metric counts every one.
const lostLogEvery = 10 * time.Second

// logLostLocked logs given-up seqs: the first at once, then at most one
// line per lostLogEvery, with how many went unlogged. The caller holds
// r.mu.
func (r *Backend) logLostLocked(room string, rel cluster.Released) {
	now := time.Now()
	if !r.lostLoggedAt.IsZero() && now.Sub(r.lostLoggedAt) < lostLogEvery {
		r.lostUnlogged += rel.Lost
		return
	}
	r.logger.Warn("chat messages of another instance never arrived: given up, and resumes across them are incomplete",
		zap.String("room", room), zap.Uint64("seqs", rel.Lost), zap.Uint64("through", rel.LostThrough), zap.Uint64("given_up_since_last_line", r.lostUnlogged))
	r.lostLoggedAt, r.lostUnlogged = now, 0
}
