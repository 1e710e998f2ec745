package main

import (
	"math/bits"
	"time"
)

// histogram counts latencies in microseconds in log-linear buckets: 16
// buckets per power of two, so a quantile is within about 6%.
type histogram struct {
	counts [64 * 16]uint64
	max    time.Duration
	n      uint64
}

const subBits = 4

func bucketOf(us uint64) int {
	if us < 1<<subBits {
		return int(us)
	}
	exp := bits.Len64(us) - subBits - 1
	return (exp+1)<<subBits + int(us>>uint(exp)) - 1<<subBits
}

// upper returns the largest value in bucket b.
func upper(b int) uint64 {
	if b < 1<<subBits {
		return uint64(b)
	}
	exp := b>>subBits - 1
	mant := uint64(b&(1<<subBits-1)) + 1<<subBits
	return (mant+1)<<uint(exp) - 1
}

func (h *histogram) add(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(uint64(d/time.Microsecond))]++
	h.n++
	if d > h.max {
		h.max = d
	}
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	if o.max > h.max {
		h.max = o.max
	}
}

// quantile returns the latency below which a fraction q of samples fall.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if rank >= h.n {
		rank = h.n - 1
	}
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen > rank {
			d := time.Duration(upper(b)) * time.Microsecond
			if d > h.max {
				d = h.max
			}
			return d
		}
	}
	return h.max
}
