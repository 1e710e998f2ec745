package chatroom

import (
	"time"

	"golang.org/x/time/rate"
)

// sendLimit is a connection's rate_limit: the limiter, and when the client
// was last told it is over it. It is made on the first frame the client
// sends (most members only read) and used by the reader alone.
type sendLimit struct {
	limiter  *rate.Limiter
	interval time.Duration // rate_limit's interval: one notice per interval
	noticed  time.Time     // when the last rate_limited frame was queued
}

func newSendLimit(opts connOptions) *sendLimit {
	return &sendLimit{limiter: rate.NewLimiter(opts.rateLimit, opts.rateBurst), interval: opts.rateInterval}
}

// allow reports whether a frame may pass at now, and, when it may not,
// whether the client is to be told. The notices are coalesced, at most one
// per interval: a client bursting past the limit would otherwise fill its
// own send queue with them and be closed as a slow consumer for the
// server's replies, where the protocol says the connection stays.
func (l *sendLimit) allow(now time.Time) (ok, notify bool) {
	if l.limiter.AllowN(now, 1) {
		return true, false
	}
	if !l.noticed.IsZero() && now.Sub(l.noticed) < l.interval {
		return false, false
	}
	l.noticed = now
	return false, true
}
