package cluster

import (
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// One order per room. A relay gives every chat message of a room a seq
// from one counter that all instances share (memcached's incr, or a NATS
// stream's sequence), so seqs rise by one per message across the cluster.
// Messages reach an instance in whatever order their paths take: a local
// one after one round trip, a remote one after a poll or a hop. An Orderer
// puts them back in seq order before any member sees them, so that every
// member of the room, on every instance, receives the same messages in the
// same order, each once. A seq that does not come (its writer died between
// taking it and relaying the message, or the relay lost it) is waited for
// at most a bounded time, then given up and reported, never skipped in
// silence.

// MaxHeldPerRoom bounds the messages an Orderer holds while it waits for a
// lower seq: beyond it, the lowest missing seqs are given up.
const MaxHeldPerRoom = 1024

// GapWait is how long an Orderer waits for a missing seq before it gives
// it up.
const GapWait = time.Second

// Orderer releases one room's chat messages in seq order, each once. It
// does no locking: the relay calls it under the lock that orders the
// room's events (inside Host.DeliverWith's update).
type Orderer struct {
	started bool
	next    uint64 // the seq released next; 0 until started or first seen
	held    map[uint64]heldMessage
}

// heldMessage is a message waiting for a lower seq, and since when. A gap
// is given up once the message above it has waited GapWait, so that gaps
// one after another pass together, not one GapWait each.
type heldMessage struct {
	ev *chat.Event
	at time.Time
}

// countedGap is the largest run of missing seqs counted one by one; a
// larger one is a counter made anew, not that many messages, and counts
// once.
const countedGap = 4 * MaxHeldPerRoom

// gapSize is how many losses a run of n missing seqs counts as.
func gapSize(n uint64) uint64 {
	if n > countedGap {
		return 1
	}
	return n
}

// Released is what an Orderer lets go of at one step.
type Released struct {
	// Events are the messages now in order, oldest first; nil entries
	// are left out (seqs taken by messages already delivered here).
	Events []*chat.Event
	// LostThrough is, when seqs were given up, the highest of them: the
	// messages up to it may be missing here. 0 when none was.
	LostThrough uint64
	// Lost is how many seqs were given up; a jump of a re-seeded counter
	// counts as one.
	Lost uint64
}

// NewOrderer returns an Orderer that holds what it is given until Start
// says where the room stands.
func NewOrderer() *Orderer { return &Orderer{held: make(map[uint64]heldMessage)} }

// Start says that the room's messages up to after came before this
// instance followed it: they are dropped, and the next one released is
// after+1. With known false nothing is known: the lowest seq held or seen
// next is taken as the start.
func (o *Orderer) Start(after uint64, known bool, now time.Time) Released {
	o.started = true
	if known {
		o.next = after + 1
		for seq := range o.held {
			if seq <= after {
				delete(o.held, seq)
			}
		}
	} else if low, ok := o.lowest(); ok {
		o.next = low
	}
	return o.release(now)
}

// Started reports whether Start was called.
func (o *Orderer) Started() bool { return o.started }

// Next is the seq this Orderer releases next; 0 when not known yet.
func (o *Orderer) Next() uint64 { return o.next }

// Waiting reports whether messages are held for a lower seq.
func (o *Orderer) Waiting() bool { return len(o.held) > 0 }

// Add takes the message with seq, or marks seq as delivered here already
// when ev is nil (a message this instance showed before it had a seq).
// seed, when not 0, says the room's counter was made anew from it (a
// memcached restart): the seqs up to it that have not come never will. It
// returns what is now in order.
func (o *Orderer) Add(seq uint64, ev *chat.Event, seed uint64, now time.Time) Released {
	var out Released
	if seq == 0 {
		return out
	}
	if o.started && o.next == 0 {
		o.next = seq // nothing was known: the first seq seen starts the room
	}
	if o.started && seq < o.next {
		return out // before this instance followed the room, or had already
	}
	if _, dup := o.held[seq]; dup {
		return out
	}
	o.held[seq] = heldMessage{ev: ev, at: now}
	if seed > 0 && seed < seq && o.started && seed >= o.next {
		// What is held up to the seed goes first, in order; the seqs
		// missing up to it are given up as one loss.
		out = o.releaseBelow(seed + 1)
		if seed >= o.next {
			out.Lost += gapSize(seed + 1 - o.next)
			out.LostThrough = seed
		}
		o.next = seed + 1
	}
	if !o.started {
		if len(o.held) > MaxHeldPerRoom {
			low, _ := o.lowest()
			delete(o.held, low)
		}
		return out
	}
	r := o.release(now)
	out.Events = append(out.Events, r.Events...)
	for len(o.held) > MaxHeldPerRoom {
		// Every pass releases at least the lowest held message.
		o.giveUp(&out)
		r := o.release(now)
		out.Events = append(out.Events, r.Events...)
	}
	return out
}

// Expire gives up the missing seqs below every message that has waited
// for wait, and returns what that lets go.
func (o *Orderer) Expire(now time.Time, wait time.Duration) Released {
	var out Released
	if !o.started {
		return out
	}
	for {
		low, ok := o.lowest()
		if !ok || now.Sub(o.held[low].at) < wait {
			return out
		}
		o.giveUp(&out)
		r := o.release(now)
		out.Events = append(out.Events, r.Events...)
	}
}

// giveUp moves next to the lowest seq held, counting what it passes.
func (o *Orderer) giveUp(out *Released) {
	low, ok := o.lowest()
	if !ok || low <= o.next {
		return
	}
	out.Lost += gapSize(low - o.next)
	out.LostThrough = low - 1
	o.next = low
}

// release lets go of the held messages from next on, as far as they run
// without a gap.
func (o *Orderer) release(now time.Time) Released {
	var out Released
	for {
		m, ok := o.held[o.next]
		if !ok {
			break
		}
		delete(o.held, o.next)
		o.next++
		if m.ev != nil {
			out.Events = append(out.Events, m.ev)
		}
	}
	return out
}

// releaseBelow lets go of every held message below seq, in seq order,
// across gaps, which it counts.
func (o *Orderer) releaseBelow(seq uint64) Released {
	var out Released
	for {
		low, ok := o.lowest()
		if !ok || low >= seq {
			return out
		}
		if low > o.next {
			out.Lost += gapSize(low - o.next)
		}
		if m := o.held[low]; m.ev != nil {
			out.Events = append(out.Events, m.ev)
		}
		delete(o.held, low)
		o.next = low + 1
	}
}

// lowest returns the lowest seq held. The map holds at most
// MaxHeldPerRoom+1 entries.
func (o *Orderer) lowest() (uint64, bool) {
	var low uint64
	found := false
	for seq := range o.held {
		if !found || seq < low {
			low, found = seq, true
		}
	}
	return low, found
}
