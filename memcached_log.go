package chatroom

import (
	"encoding/json"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"strconv"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"go.uber.org/zap"
)

// The room log: every event of a room gets the next number of the room's
// counter (<prefix>seq:<room>) and is stored at <prefix>msg:<room>:<n>.
// Instances with members in the room poll the counter and fetch what is
// new; memcached's LRU and the entries' expiry bound what the log holds.
const (
	// pollFast is the poll period while events flow; pollIdle after
	// quietAfter without any. The idle period bounds what an instance with
	// members but no traffic costs (about 1000/pollIdle requests/s); the
	// fast one bounds cross-instance latency under load.
	pollFast   = 40 * time.Millisecond
	pollIdle   = 100 * time.Millisecond
	quietAfter = 5 * time.Second

	// logGapWait is how long a number that was allocated but not written
	// (its writer died, or memcached restarted) is waited for before it
	// is skipped.
	logGapWait = time.Second
	// maxLogWindow bounds how many entries one poll fetches per room: an
	// instance that falls further behind (or a counter re-seeded far
	// ahead) skips to the latest entries.
	maxLogWindow = 512
	// reseedJump is how far above the position this instance has read a
	// counter must be to count as re-seeded (from the clock, in µs) rather
	// than ahead by the entries of a few polls.
	reseedJump = 1 << 16
	// maxOutbox bounds the events held while memcached is unreachable;
	// beyond it the oldest are dropped.
	maxOutbox = 4096
	// pollKeepWarm keeps following a room without local members that Warm
	// prepared, for a joiner that is on its way.
	pollKeepWarm = 10 * time.Second
)

// logTTL is how long a room log entry lives. Entries are what other
// instances read within a poll; when history is kept, they are also the
// cluster's history, for joiners on instances without members in the room.
func logTTL(keepHistory int) time.Duration {
	if keepHistory > 0 {
		return time.Hour
	}
	return 2 * time.Minute
}

// logEntry is the value of a room log entry.
type logEntry struct {
	// Node is the instance that published the event.
	Node string `json:"node"`
	// Gen orders the presence changes of Node (see memcached_presence.go).
	Gen uint64 `json:"gen,omitempty"`
	// At is when Node published it, in Unix milliseconds.
	At int64 `json:"at,omitempty"`
	// Event is the event itself.
	Event *chat.Event `json:"ev"`
}

// decodeLogEntry parses an entry, rejecting anything that is not an event
// this version knows.
func decodeLogEntry(value []byte) (*logEntry, bool) {
	var e logEntry
	if json.Unmarshal(value, &e) != nil || e.Event == nil || e.Node == "" || e.Event.ID == "" {
		return nil, false
	}
	switch e.Event.Kind {
	case chat.KindChat, chat.KindJoin, chat.KindLeave, chat.KindNick:
		return &e, true
	}
	return nil, false
}

// outboxEntry is an event of this instance waiting for the room log.
type outboxEntry struct {
	room string
	gen  uint64
	at   time.Time
	ev   *chat.Event
}

// enqueueLocked adds e to the outbox and wakes the publisher. The caller
// holds r.mu.
func (r *memcachedRegistry) enqueueLocked(e outboxEntry) {
	e.at = time.Now()
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
func (r *memcachedRegistry) requeue(rest []outboxEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writing = false
	r.outbox = append(rest, r.outbox...)
	if over := len(r.outbox) - maxOutbox; over > 0 {
		r.outbox = r.outbox[over:]
	}
}

// publishLoop writes the outbox to the room logs as events arrive, and
// again when memcached returns.
func (r *memcachedRegistry) publishLoop() {
	defer r.wg.Done()
	touched := make(map[string]time.Time) // when each room's counter was last touched
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.wakePublisher:
		}
		r.flushOutboxTouching(touched)
	}
}

// flushOutbox writes what the outbox holds, stopping at the first failure.
func (r *memcachedRegistry) flushOutbox() {
	r.flushOutboxTouching(make(map[string]time.Time))
}

func (r *memcachedRegistry) flushOutboxTouching(touched map[string]time.Time) {
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
		var rest []outboxEntry
		if !r.client.isUp() {
			rest = batch
		} else {
			rest = r.publishBatch(batch, touched)
		}
		r.requeue(rest)
		if len(rest) > 0 {
			return
		}
	}
}

// publishBatch writes events to their room logs: per room, one increment
// reserves numbers for all of its events, which are then written in order,
// so that an entry is never visible before an earlier one of the same
// instance. It returns the events it could not write because memcached is
// unreachable.
func (r *memcachedRegistry) publishBatch(batch []outboxEntry, touched map[string]time.Time) []outboxEntry {
	var order []string
	byRoom := make(map[string][]outboxEntry)
	for _, e := range batch {
		if byRoom[e.room] == nil {
			order = append(order, e.room)
		}
		byRoom[e.room] = append(byRoom[e.room], e)
	}
	ttl := max(logTTL(int(r.hist.keep.Load())), r.hist.resumeWindow())
	for i, room := range order {
		events := byRoom[room]
		last, err := r.reserveSeq(room, uint64(len(events)), ttl, touched)
		if err != nil {
			if unavailable(err) {
				return remaining(order[i:], byRoom)
			}
			continue // a corrupt counter: these events cannot be logged
		}
		first := last - uint64(len(events)) + 1
		for j, e := range events {
			value, err := json.Marshal(logEntry{Node: r.nodeID, Gen: e.gen, At: e.at.UnixMilli(), Event: e.ev})
			if err != nil {
				continue
			}
			err = r.client.set(&memcache.Item{Key: r.keys.msg(room, first+uint64(j)), Value: value, Expiration: expirySeconds(ttl)})
			if err != nil && unavailable(err) {
				byRoom[room] = events[j:]
				return remaining(order[i:], byRoom)
			}
			if err == nil {
				r.noteOwnEntry(room, first+uint64(j))
			}
		}
	}
	return nil
}

// remaining lists the events of rooms, in order.
func remaining(rooms []string, byRoom map[string][]outboxEntry) []outboxEntry {
	var out []outboxEntry
	for _, room := range rooms {
		out = append(out, byRoom[room]...)
	}
	return out
}

// reserveSeq takes n numbers of room's log and returns the last. A missing
// counter is seeded with the current time in microseconds, above any number
// it can have handed out before (a room does not log a million events a
// second), so that readers never take a new entry for one they have seen.
// The counter's lifetime is refreshed now and then: increments do not.
func (r *memcachedRegistry) reserveSeq(room string, n uint64, ttl time.Duration, touched map[string]time.Time) (uint64, error) {
	key := r.keys.seq(room)
	counterTTL := expirySeconds(ttl + ttl/2) // outlives the entries written between two touches
	last, err := r.client.incr(key, n)
	if isMiss(err) {
		seed := uint64(time.Now().UnixMicro())
		err = r.client.add(&memcache.Item{Key: key, Value: []byte(strconv.FormatUint(seed, 10)), Expiration: counterTTL})
		if answer(err) {
			touched[room] = time.Now()
			last, err = r.client.incr(key, n)
		}
	}
	if err != nil {
		return 0, err
	}
	now := time.Now()
	if now.Sub(touched[room]) > ttl/4 {
		if r.client.touch(key, counterTTL) == nil {
			touched[room] = now
		}
		for k, t := range touched {
			if now.Sub(t) > ttl {
				delete(touched, k)
			}
		}
	}
	return last, nil
}

// maxOwnEntries bounds the numbers of its own entries an instance
// remembers for one room between two polls.
const maxOwnEntries = 4096

// noteOwnEntry records that this instance wrote entry n of room, so that
// the poll does not fetch it back.
func (r *memcachedRegistry) noteOwnEntry(room string, n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.polls[room] != nil && len(r.ownEntries[room]) < maxOwnEntries {
		r.ownEntries[room] = append(r.ownEntries[room], n)
	}
}

// pollState is how far this instance has read a room's log.
type pollState struct {
	next    uint64               // lowest number not handled yet; 0 until known
	done    map[uint64]bool      // numbers above next already handled
	missing map[uint64]time.Time // numbers found missing, since when
	created time.Time
	// since, when set, is when this instance began to follow the room
	// without Warm having read the log position (memcached was down):
	// the latest entries are read, and those published before it skipped.
	since time.Time
}

func newPollState(now time.Time) *pollState {
	return &pollState{done: make(map[uint64]bool), missing: make(map[uint64]time.Time), created: now}
}

// pollLoop follows the logs of the rooms this instance has members in.
func (r *memcachedRegistry) pollLoop() {
	defer r.wg.Done()
	t := time.NewTimer(pollIdle)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		r.pollOnce()
		r.mu.Lock()
		period := pollIdle
		if time.Since(r.lastActivity) < quietAfter {
			period = pollFast
		}
		r.mu.Unlock()
		t.Reset(period)
	}
}

// polledRoom is one room of a poll.
type polledRoom struct {
	name    string
	state   *pollState
	cur     uint64
	want    []uint64
	entries []*logEntry
}

// pollOnce reads the counters of the followed rooms, then their new
// entries, and delivers what other instances published.
func (r *memcachedRegistry) pollOnce() {
	rooms := r.roomsToPoll(time.Now())
	if len(rooms) == 0 || !r.client.isUp() {
		return
	}
	seqKeys := make([]string, len(rooms))
	for i, p := range rooms {
		seqKeys[i] = r.keys.seq(p.name)
	}
	counters, err := r.client.getMulti(seqKeys)
	if err != nil {
		return
	}
	var msgKeys []string
	for i, p := range rooms {
		cur, ok := parseCounter(counters[seqKeys[i]])
		if !ok {
			continue // no log (yet, or lost with a restart): nothing new
		}
		p.cur = cur
		if st := p.state; st.next > 1 && (cur+1 < st.next || cur-st.next >= reseedJump) {
			// The log was lost and its counter re-seeded from a clock:
			// what was in it and not read yet is gone, so a resume from
			// before now may miss some. (Next 1 is a log this instance
			// has not seen yet, whose counter starts far above it.)
			r.hist.markGap(p.name)
		}
		p.want = p.state.wanted(cur)
		for _, n := range p.want {
			msgKeys = append(msgKeys, r.keys.msg(p.name, n))
		}
	}
	if len(msgKeys) == 0 {
		return
	}
	items, err := r.client.getMulti(msgKeys)
	if err != nil {
		return
	}
	now := time.Now()
	for _, p := range rooms {
		if len(p.want) == 0 {
			continue
		}
		for _, n := range p.want {
			it := items[r.keys.msg(p.name, n)]
			if it == nil {
				p.state.noteMissing(n, now)
				continue
			}
			p.state.done[n] = true
			delete(p.state.missing, n)
			e, ok := decodeLogEntry(it.Value)
			if ok && e.Node != r.nodeID && (p.state.since.IsZero() || e.At >= p.state.since.UnixMilli()) {
				p.entries = append(p.entries, e)
			}
		}
		p.state.advance()
		if len(p.entries) > 0 {
			r.deliverEntries(p.name, p.state, p.entries)
		}
	}
}

// roomsToPoll lists the rooms to follow: those with local members, and
// those that Warm prepared for a joiner on its way.
func (r *memcachedRegistry) roomsToPoll(now time.Time) []*polledRoom {
	r.mu.Lock()
	defer r.mu.Unlock()
	for room := range r.local {
		if r.polls[room] == nil {
			st := newPollState(now) // Warm could not run: start from now
			st.since = now
			r.polls[room] = st
			r.hist.markGap(room) // what was said before is not read
		}
	}
	out := make([]*polledRoom, 0, len(r.polls))
	for room, st := range r.polls {
		if len(r.local[room]) == 0 && now.Sub(st.created) > pollKeepWarm {
			delete(r.polls, room)
			continue
		}
		for _, n := range r.ownEntries[room] {
			if st.next != 0 && n >= st.next {
				st.done[n] = true
			}
		}
		out = append(out, &polledRoom{name: room, state: st})
	}
	clear(r.ownEntries)
	return out
}

// deliverEntries hands the entries of other instances to the local members,
// in log order: chat messages always, presence changes when they are newer
// than what this instance knows of their instance.
func (r *memcachedRegistry) deliverEntries(room string, st *pollState, entries []*logEntry) {
	r.deliver(room, func() []*chat.Event {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.polls[room] != st {
			return nil // Warm started over: its history and presence hold these
		}
		r.lastActivity = time.Now()
		var out []*chat.Event
		for _, e := range entries {
			if e.Event.Kind == chat.KindChat {
				r.hist.Publish(room, e.Event)
				out = append(out, e.Event)
			} else if r.applyRemoteEventLocked(room, e) {
				out = append(out, e.Event)
			}
		}
		return out
	})
}

// wanted returns the numbers to fetch up to cur.
func (st *pollState) wanted(cur uint64) []uint64 {
	switch {
	case st.next == 0:
		// First look without Warm: the latest entries, of which those
		// published since this instance began to follow are news.
		st.next = 1
		if cur >= warmWindow {
			st.next = cur - warmWindow + 1
		}
	case cur+1 < st.next:
		// The counter went back: it was lost and re-seeded by a clock
		// behind ours. Follow it from here.
		st.next = cur + 1
		clear(st.done)
		clear(st.missing)
		return nil
	case cur >= st.next && cur-st.next >= maxLogWindow:
		st.next = cur - maxLogWindow + 1
		for n := range st.done {
			if n < st.next {
				delete(st.done, n)
			}
		}
		for n := range st.missing {
			if n < st.next {
				delete(st.missing, n)
			}
		}
	}
	var want []uint64
	for n := st.next; n <= cur; n++ {
		if !st.done[n] {
			want = append(want, n)
		}
	}
	return want
}

// noteMissing records that entry n was not there; after logGapWait it is
// given up.
func (st *pollState) noteMissing(n uint64, now time.Time) {
	since, ok := st.missing[n]
	switch {
	case !ok:
		st.missing[n] = now
	case now.Sub(since) >= logGapWait:
		delete(st.missing, n)
		st.done[n] = true
	}
}

// advance moves next past the numbers handled.
func (st *pollState) advance() {
	for st.done[st.next] {
		delete(st.done, st.next)
		st.next++
	}
}

// parseCounter reads a counter's value.
func parseCounter(it *memcache.Item) (uint64, bool) {
	if it == nil {
		return 0, false
	}
	n, err := strconv.ParseUint(string(trimSpaceBytes(it.Value)), 10, 64)
	return n, err == nil
}

// trimSpaceBytes drops the padding memcached may leave in a counter that
// shrank in digits.
func trimSpaceBytes(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\r' || b[len(b)-1] == '\n') {
		b = b[:len(b)-1]
	}
	return b
}

// warmWindow is how many of a room's latest log entries Warm reads at
// least: the presence changes since the instances' last snapshots.
const warmWindow = 64

// loadTail reads the latest entries of room's log, which ends at cur:
// enough to hold the last keep chat events, and at least warmWindow
// entries. It returns them oldest first.
func (r *memcachedRegistry) loadTail(room string, cur uint64, keep int) []*logEntry {
	window := uint64(max(warmWindow, min(2*keep+32, maxLogWindow)))
	var tail []*logEntry // newest first while reading backwards
	chats := 0
	hi := cur
	for round := 0; round < 4 && hi > 0 && (round == 0 || chats < keep); round++ {
		lo := uint64(1)
		if hi > window {
			lo = hi - window + 1
		}
		keys := make([]string, 0, hi-lo+1)
		for n := hi; n >= lo; n-- {
			keys = append(keys, r.keys.msg(room, n))
		}
		items, err := r.client.getMulti(keys)
		if err != nil || len(items) == 0 {
			break
		}
		for _, k := range keys {
			if it := items[k]; it != nil {
				if e, ok := decodeLogEntry(it.Value); ok {
					tail = append(tail, e)
					if e.Event.Kind == chat.KindChat {
						chats++
					}
				}
			}
		}
		if lo == 1 {
			break
		}
		hi = lo - 1
	}
	for i, j := 0, len(tail)-1; i < j; i, j = i+1, j-1 {
		tail[i], tail[j] = tail[j], tail[i]
	}
	return tail
}

// lastChats returns the last keep chat events of entries, oldest first.
func lastChats(entries []*logEntry, keep int) []*chat.Event {
	var out []*chat.Event
	for _, e := range entries {
		if e.Event.Kind == chat.KindChat {
			out = append(out, e.Event)
		}
	}
	if len(out) > keep {
		out = out[len(out)-keep:]
	}
	return out
}

// replaceHistory sets room's history to events, oldest first. The
// memcached registry uses the embedded one as its per-room cache. When
// events is empty, what the room said before is unknown here.
func (r *embeddedRegistry) replaceHistory(room string, events []*chat.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.roomHistory(room, true)
	*h = *newRoomHistory(room)
	now := time.Now()
	keep, window := int(r.keep.Load()), r.resumeWindow()
	for _, ev := range events {
		h.add(ev, now, keep, window)
	}
	if len(events) == 0 {
		h.markGap(now)
	}
}
