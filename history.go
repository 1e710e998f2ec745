package chatroom

import (
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// DefaultResumeWindow is how long chat events stay available to a client
// that resumes, unless `resume_window` says otherwise.
const DefaultResumeWindow = 2 * time.Minute

// MaxResumeWindow bounds `resume_window`: memcached reads a relative expiry
// beyond 30 days as an absolute time, and a day is more than any reconnect
// needs.
const MaxResumeWindow = 24 * time.Hour

// maxSinceAhead is how far ahead of this instance's clock a `since` may be
// before it counts as from the future: seqs are times in microseconds, and
// instances' clocks differ a little.
const maxSinceAhead = time.Minute

// maxHeldEvents bounds the chat events a room keeps in memory, whatever
// the resume window and the history say (history is at most MaxHistory,
// which is no more than this).
const maxHeldEvents = 1000

// roomHistory is one room's chat events as this instance saw them, in the
// order it saw them: those of the last resume window, and at least the last
// `history` ones, at most maxHeldEvents. It also stamps the sequence
// numbers that a resuming client names (see Since).
type roomHistory struct {
	room   string
	events []heldEvent // events[start:] are held, oldest first
	start  int
	// last is the highest seq this instance has seen in the room.
	last uint64
	// floor is the seq below which events may be missing: every chat
	// event with a higher seq that this instance saw is held. It rises as
	// events are dropped, and when the instance learns it missed some.
	floor uint64
}

// heldEvent is an event and when this instance recorded it.
type heldEvent struct {
	ev *chat.Event
	at time.Time
}

// newRoomHistory starts the history of a room: what came before its first
// event, this instance does not know.
func newRoomHistory(room string) *roomHistory {
	return &roomHistory{room: room}
}

// stamp gives ev its seq when it has none: the time in microseconds, or one
// more than the last seq of the room when that is higher, so that seqs
// rise within the room on this instance even when the clock steps back.
// An event from another instance keeps the seq it was given there, unless
// it is further ahead of this clock than a resume may be: shared storage
// is input, and a forged seq near 2^64 would otherwise make every resume
// look complete and stop the room's seqs from rising.
func (h *roomHistory) stamp(ev *chat.Event, now time.Time) {
	if ev.Seq == 0 {
		ev.Seq = max(uint64(max(now.UnixMicro(), 1)), h.last+1)
	} else if limit := uint64(max(now.Add(maxSinceAhead).UnixMicro(), 1)); ev.Seq > limit {
		ev.Seq = limit
	}
}

// add records ev, stamping it, and drops what the bounds no longer keep.
func (h *roomHistory) add(ev *chat.Event, now time.Time, keep int, window time.Duration) {
	h.stamp(ev, now)
	if h.held() == 0 && h.last == 0 {
		// The first event this instance sees: older ones are unknown.
		h.floor = max(h.floor, ev.Seq-1)
	}
	h.last = max(h.last, ev.Seq)
	h.events = append(h.events, heldEvent{ev: ev, at: now})
	h.prune(now, keep, window)
}

// held returns how many events are held.
func (h *roomHistory) held() int { return len(h.events) - h.start }

// prune drops the oldest events beyond maxHeldEvents, and those older than
// window beyond the last keep.
func (h *roomHistory) prune(now time.Time, keep int, window time.Duration) {
	for n := h.held(); n > 0; n-- {
		oldest := h.events[h.start]
		if n <= maxHeldEvents && (n <= keep || now.Sub(oldest.at) <= window) {
			break
		}
		h.floor = max(h.floor, oldest.ev.Seq)
		h.events[h.start] = heldEvent{}
		h.start++
	}
	// Reuse the front of the slice once half of it is dropped, so that a
	// busy room does not grow its array without end.
	if h.start > 32 && h.start >= len(h.events)/2 {
		n := copy(h.events, h.events[h.start:])
		clear(h.events[n:])
		h.events = h.events[:n]
		h.start = 0
	}
}

// latest returns at most n of the held events, the newest, oldest first.
func (h *roomHistory) latest(n int) []*chat.Event {
	held := h.events[h.start:]
	if len(held) > n {
		held = held[len(held)-n:]
	}
	out := make([]*chat.Event, len(held))
	for i, e := range held {
		out[i] = e.ev
	}
	return out
}

// since returns the held events with a seq above after, in the order they
// were seen, and whether they are all the room's events after it that this
// instance saw: not when after is below the floor (some were dropped), nor
// when it is above every seq seen here (it comes from elsewhere: another
// epoch, or an event this instance has not received).
func (h *roomHistory) since(after uint64) ([]*chat.Event, bool) {
	var out []*chat.Event
	for _, e := range h.events[h.start:] {
		if e.ev.Seq > after {
			out = append(out, e.ev)
		}
	}
	return out, after >= h.floor && after <= h.last
}

// markGap records that this instance may have missed events of the room
// with seqs up to through, or, with through 0, up to the next one it
// records: a client resuming from before it is told its replay may be
// incomplete.
func (h *roomHistory) markGap(through uint64) {
	if through == 0 {
		through = h.last + 1
	}
	h.floor = max(h.floor, through)
}
