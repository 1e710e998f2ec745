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

// The publishing side of the relay log (log.go): the outbox, and the
// publisher that writes it to the partitions.

// outboxEntry is an event of this instance waiting for the relay log.
type outboxEntry struct {
	room string
	gen  uint64
	ev   *chat.Event // a chat event without a Seq is sequenced when written
	seed uint64      // its room's counter was made anew from this (cluster.Entry.Seed)
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
		entry := logEntry{Node: r.nodeID, Gen: e.gen, Room: e.room, Event: e.ev, Seed: e.seed}
		if e.ev.Kind == chat.KindChat && e.ev.Seq == 0 {
			// Shown here while the room's counter was away: it
			// takes its place in the room's order now.
			var ok bool
			if entry, ok = r.sequenceLate(entry); !ok {
				return events[j:], chatRooms
			}
			events[j].ev, events[j].seed = entry.Event, entry.Seed
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
