package cluster

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

func msg(seq uint64) *chat.Event {
	return &chat.Event{Kind: chat.KindChat, ID: "1", Msg: strconv.FormatUint(seq, 10), Seq: seq}
}

func seqs(evs []*chat.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Seq
	}
	return out
}

// Messages that arrive in any order are released in seq order, each once.
func TestOrdererReleasesInSeqOrderEachOnce(t *testing.T) {
	now := time.Unix(1000, 0)
	o := NewOrderer()
	o.Start(100, true, now)
	order := rand.Perm(200)
	var got []uint64
	for _, i := range order {
		seq := uint64(101 + i)
		got = append(got, seqs(o.Add(seq, msg(seq), 0, now).Events)...)
		got = append(got, seqs(o.Add(seq, msg(seq), 0, now).Events)...) // again: a duplicate
	}
	if len(got) != 200 {
		t.Fatalf("released %d messages, want 200", len(got))
	}
	for i, seq := range got {
		if seq != uint64(101+i) {
			t.Fatalf("message %d has seq %d, want %d", i, seq, 101+i)
		}
	}
	if o.Waiting() {
		t.Fatal("still waiting after every seq came")
	}
}

// Before Start everything is held; Start drops what came before the room
// was followed and releases the rest in order.
func TestOrdererHoldsUntilStart(t *testing.T) {
	now := time.Unix(1000, 0)
	o := NewOrderer()
	for _, seq := range []uint64{12, 9, 11, 10} {
		if r := o.Add(seq, msg(seq), 0, now); len(r.Events) != 0 {
			t.Fatalf("released %v before Start", seqs(r.Events))
		}
	}
	r := o.Start(10, true, now)
	if got := seqs(r.Events); len(got) != 2 || got[0] != 11 || got[1] != 12 {
		t.Fatalf("Start(10) released %v, want [11 12]", got)
	}
}

// A seq that never comes is given up after the wait, counted, and what
// waited behind it goes out in order; nothing is given up sooner.
func TestOrdererGivesUpAMissingSeqAfterTheWait(t *testing.T) {
	now := time.Unix(1000, 0)
	o := NewOrderer()
	o.Start(0, true, now)
	o.Add(1, msg(1), 0, now)
	o.Add(4, msg(4), 0, now)
	o.Add(3, msg(3), 0, now)
	if r := o.Expire(now.Add(GapWait/2), GapWait); len(r.Events) != 0 || r.Lost != 0 {
		t.Fatalf("gave up %d and released %v before the wait", r.Lost, seqs(r.Events))
	}
	r := o.Expire(now.Add(GapWait), GapWait)
	if got := seqs(r.Events); len(got) != 2 || got[0] != 3 || got[1] != 4 || r.Lost != 1 || r.LostThrough != 2 {
		t.Fatalf("after the wait: released %v, lost %d through %d; want [3 4], 1 through 2", got, r.Lost, r.LostThrough)
	}
	if r := o.Add(2, msg(2), 0, now); len(r.Events) != 0 {
		t.Fatalf("a seq given up came late and was released: %v", seqs(r.Events))
	}
}

// A jump (a counter made anew) releases what is held below it and goes on
// from there at once, reporting the loss.
func TestOrdererJump(t *testing.T) {
	now := time.Unix(1000, 0)
	o := NewOrderer()
	o.Start(0, true, now)
	o.Add(1, msg(1), 0, now)
	o.Add(3, msg(3), 0, now)
	r := o.Add(5000, msg(5000), 4999, now)
	if got := seqs(r.Events); len(got) != 2 || got[0] != 3 || got[1] != 5000 || r.LostThrough != 4999 || r.Lost == 0 {
		t.Fatalf("jump released %v, lost %d through %d", got, r.Lost, r.LostThrough)
	}
	if r := o.Add(5001, msg(5001), 0, now); len(r.Events) != 1 {
		t.Fatal("the message after the jump was not released")
	}
}

// A nil event marks a seq delivered already: it frees what waits behind it
// without being released itself.
func TestOrdererNilMarksDelivered(t *testing.T) {
	now := time.Unix(1000, 0)
	o := NewOrderer()
	o.Start(0, true, now)
	o.Add(2, msg(2), 0, now)
	r := o.Add(1, nil, 0, now)
	if got := seqs(r.Events); len(got) != 1 || got[0] != 2 {
		t.Fatalf("released %v, want [2]", got)
	}
}

// However far ahead forged seqs are, an Orderer holds at most
// MaxHeldPerRoom messages.
func TestOrdererHoldsABoundedNumber(t *testing.T) {
	now := time.Unix(1000, 0)
	o := NewOrderer()
	o.Start(0, true, now)
	for i := uint64(0); i < 3*MaxHeldPerRoom; i++ {
		seq := 10 + 7*i
		o.Add(seq, msg(seq), 0, now)
		if len(o.held) > MaxHeldPerRoom {
			t.Fatalf("holds %d messages", len(o.held))
		}
	}
}

// Gaps one after another pass together once the messages above them have
// waited: a wait per gap made a room whose relay lost every other message
// crawl a second at a time.
func TestOrdererGapsPassTogether(t *testing.T) {
	now := time.Unix(1000, 0)
	o := NewOrderer()
	o.Start(0, true, now)
	for seq := uint64(2); seq <= 40; seq += 2 {
		o.Add(seq, msg(seq), 0, now)
	}
	r := o.Expire(now.Add(GapWait), GapWait)
	if len(r.Events) != 20 || r.Lost != 20 || o.Waiting() {
		t.Fatalf("after one wait: released %d, lost %d, still waiting %v; want 20, 20, false", len(r.Events), r.Lost, o.Waiting())
	}
}

// A counter made anew leaves a gap of millions of seqs: it counts as one
// loss, not millions.
func TestOrdererCountsAReseedOnce(t *testing.T) {
	now := time.Unix(1000, 0)
	o := NewOrderer()
	o.Start(10, true, now)
	o.Add(20_000_000, msg(20_000_000), 0, now)
	if r := o.Expire(now.Add(GapWait), GapWait); r.Lost != 1 || len(r.Events) != 1 {
		t.Fatalf("a re-seeded counter's gap: lost %d, released %d; want 1, 1", r.Lost, len(r.Events))
	}
}

// The writer that made a room's counter anew may take the new counter's
// second seq, another writer its first: the jump is from the seed, so the
// first still goes out, before the second, whichever arrives first.
func TestOrdererSeedLetsTheNewCountersFirstSeqsIn(t *testing.T) {
	now := time.Unix(1000, 0)
	o := NewOrderer()
	o.Start(10, true, now)
	const seed = 1_000_000
	r := o.Add(seed+2, msg(seed+2), seed, now) // the seeder's, first to arrive
	if len(r.Events) != 0 || r.Lost != 1 || r.LostThrough != seed {
		t.Fatalf("the seeder's message: released %v, lost %d through %d; want nothing yet (seed+1 is on its way), 1 through the seed", seqs(r.Events), r.Lost, r.LostThrough)
	}
	r = o.Add(seed+1, msg(seed+1), 0, now)
	if got := seqs(r.Events); len(got) != 2 || got[0] != seed+1 || got[1] != seed+2 {
		t.Fatalf("the other writer's first seq of the new counter: released %v, want [seed+1 seed+2]", got)
	}
}
