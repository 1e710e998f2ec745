package memcached

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// Connection ids (unique across the cluster, never reused by two live
// connections) come from two disjoint ranges:
//
//   - the cluster counter <prefix>id, taken in blocks of idBlock so that a
//     connection rarely costs a round trip. Whenever the counter is missing
//     (first use, memcached restarted, evicted) it is seeded with the
//     microseconds since idEpoch, or above any id this instance has seen
//     in the cluster if that is higher. A cluster hands out far fewer than
//     a million ids a second, so a later seed taken from the clock is above
//     every id handed out before: ids stay unique across a memcached
//     restart while their connections are live. Counter ids have 14 digits
//     today and stay below fallbackIDBase for thousands of years.
//     The counter is a value anyone with access to memcached can set, so
//     every block is checked before use: when it does not lie wholly above
//     the highest id this instance obtained, the highest id a live member
//     of the cluster view has and the highest block another instance
//     publishes in its presence header, the counter is moved above them
//     first; and an id a live member elsewhere has is skipped. A value set
//     far up (even by a forged presence) only moves ids up, at worst into
//     the fallback range: never onto an id in use.
//   - while memcached is unreachable, fallback ids: fallbackIDBase plus a
//     random per-instance number times fallbackIDSpan plus a local counter.
//     They are above anything the counter reaches, so they never equal a
//     counter id; two instances share a fallback range only if they draw
//     the same of 10^10 random numbers.
const (
	idBlock          = 16
	idAttempts       = 4 * idBlock // ids looked at before taking a fallback one
	idCounterTTL     = 24 * time.Hour
	fallbackIDBase   = uint64(1_000_000_000_000_000_000) // 10^18
	fallbackIDSpan   = uint64(100_000_000)               // 10^8 ids per random draw
	fallbackIDRanges = uint64(10_000_000_000)            // 10^10 draws
)

// idEpoch is where the clock seed of the id counter starts: it keeps ids a
// few digits shorter than Unix microseconds would.
var idEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// idAllocator hands out connection ids. Its lock guards memory only: the
// round trips of a refill run without it, so that a slow memcached delays
// only the joiners that need a new block, each within its own context.
type idAllocator struct {
	server *server
	key    string
	// floor returns the highest counter id known in use in the cluster
	// (from presence), so that no block starts at or below it.
	floor func() uint64
	// taken reports whether a live member elsewhere has id, so that it is
	// never handed out again. It is called without mu.
	taken func(id uint64) bool

	mu        sync.Mutex
	next, end uint64 // the current block: next..end
	highest   uint64 // highest counter value this instance obtained
	fbBase    uint64 // current fallback range
	fbNext    uint64
}

// blockEnd returns the highest counter value obtained, published in the
// presence header so that a re-seed elsewhere lands above it.
func (a *idAllocator) blockEnd() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.highest
}

// newID returns a fresh id: from the current block, from a new block, or,
// when memcached cannot be reached in time (or the counter only yields ids
// in use), from the fallback range.
func (a *idAllocator) newID(ctx context.Context) string {
	for i := 0; i < idAttempts; i++ {
		id := a.counterID(ctx)
		if id == 0 {
			break
		}
		if !a.taken(id) {
			return strconv.FormatUint(id, 10)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return strconv.FormatUint(a.fallback(), 10)
}

// counterID returns the next id of the current block, or the first of a
// new block; 0 when memcached cannot give one before ctx ends.
func (a *idAllocator) counterID(ctx context.Context) uint64 {
	a.mu.Lock()
	if a.next != 0 && a.next <= a.end {
		id := a.next
		a.next++
		a.mu.Unlock()
		return id
	}
	highest := a.highest
	a.mu.Unlock()
	if ctx.Err() != nil || !a.server.usable() {
		return 0
	}
	got := make(chan uint64, 1)
	go func() { got <- a.refill(highest) }()
	select {
	case id := <-got:
		return id
	case <-ctx.Done():
		// The refill goes on and installs its block for the next joiner.
		return 0
	}
}

// refill takes a new block from the cluster counter, keeps its first id
// for the caller and installs the rest; 0 when it failed.
func (a *idAllocator) refill(highest uint64) uint64 {
	floor := min(max(highest, a.floor()), fallbackIDBase)
	end, err := a.server.incr(a.key, idBlock)
	if isMiss(err) {
		seed := max(uint64(time.Since(idEpoch).Microseconds()), floor)
		// Add fails when another instance seeded first: its seed is
		// as good, and the increment below goes on from it.
		err = a.server.add(&memcache.Item{Key: a.key, Value: []byte(strconv.FormatUint(seed, 10)), Expiration: expirySeconds(idCounterTTL)})
		if answer(err) {
			end, err = a.server.incr(a.key, idBlock)
		}
	}
	if err == nil && end < floor+idBlock {
		// The block reaches down to an id in use: the counter was lost
		// and re-seeded by a peer with a slow clock, set back by hand
		// or forged, or wrapped round past 2^64. Move it above, so that
		// the block lies wholly above floor (other instances' increments
		// in between only move it further).
		end, err = a.server.incr(a.key, floor+idBlock-end)
	}
	if err != nil || end >= fallbackIDBase || end < floor+idBlock {
		return 0
	}
	first := end - idBlock + 1
	a.mu.Lock()
	defer a.mu.Unlock()
	if end > a.highest {
		a.highest = end
	}
	if a.next == 0 || a.next > a.end {
		a.next, a.end = first+1, end
	}
	return first
}

// fallback returns the next id of this instance's fallback range. The
// caller holds a.mu.
func (a *idAllocator) fallback() uint64 {
	if a.fbBase == 0 || a.fbNext >= fallbackIDSpan {
		a.fbBase = fallbackIDBase + rand.Uint64N(fallbackIDRanges)*fallbackIDSpan
		a.fbNext = 1
	}
	id := a.fbBase + a.fbNext
	a.fbNext++
	return id
}
