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
//   - while memcached is unreachable, fallback ids: fallbackIDBase plus a
//     random per-instance number times fallbackIDSpan plus a local counter.
//     They are above anything the counter reaches, so they never equal a
//     counter id; two instances share a fallback range only if they draw
//     the same of 10^10 random numbers.
const (
	idBlock          = 16
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
	// floor returns the highest counter id known in the cluster (from
	// presence), so that a re-seed lands above it.
	floor func() uint64

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
// when memcached cannot be reached in time, from the fallback range.
func (a *idAllocator) newID(ctx context.Context) string {
	a.mu.Lock()
	if a.next != 0 && a.next <= a.end {
		id := a.next
		a.next++
		a.mu.Unlock()
		return strconv.FormatUint(id, 10)
	}
	highest := a.highest
	a.mu.Unlock()
	if ctx.Err() == nil && a.server.usable() {
		got := make(chan uint64, 1)
		go func() { got <- a.refill(highest) }()
		select {
		case id := <-got:
			if id != 0 {
				return strconv.FormatUint(id, 10)
			}
		case <-ctx.Done():
			// The refill goes on and installs its block for the next
			// joiner.
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return strconv.FormatUint(a.fallback(), 10)
}

// refill takes a new block from the cluster counter, keeps its first id
// for the caller and installs the rest; 0 when it failed.
func (a *idAllocator) refill(highest uint64) uint64 {
	end, err := a.server.incr(a.key, idBlock)
	if isMiss(err) {
		seed := max(uint64(time.Since(idEpoch).Microseconds()), highest, a.floor())
		// Add fails when another instance seeded first: its seed is
		// as good, and the increment below goes on from it.
		err = a.server.add(&memcache.Item{Key: a.key, Value: []byte(strconv.FormatUint(seed, 10)), Expiration: expirySeconds(idCounterTTL)})
		if answer(err) {
			end, err = a.server.incr(a.key, idBlock)
		}
	}
	if err == nil && end <= highest {
		// The counter was lost and re-seeded below what this instance
		// handed out (a peer with a slow clock): push it above.
		end, err = a.server.incr(a.key, highest-end+idBlock)
	}
	if err != nil || end >= fallbackIDBase || end < idBlock {
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
