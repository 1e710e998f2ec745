package chatroom

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// TestClusterPoisonedBeforeStart: every kind of key under the prefix holds
// a hostile value before either instance has started (the relay partition
// counters at 2^64-1, bases, the id counter, the index, a forged instance's
// header and chunks, a room history). Both instances still answer joins
// within a bound and relay between each other. The backend's start used to
// loop forever on a first look at a partition counter at 2^64-1, so the
// first join never got an answer.
func TestClusterPoisonedBeforeStart(t *testing.T) {
	mc := testenv.StartMemcached(t)
	const prefix = "chatroom:"
	const forged = "0123456789abcdef"
	for p := 0; p < 8; p++ {
		mc.Set(fmt.Sprintf("%slog:%d", prefix, p), "18446744073709551615", 0)
		mc.Set(fmt.Sprintf("%slog:%d:base", prefix, p), "18446744073709551000", 0)
		mc.Set(fmt.Sprintf("%slog:%d:18446744073709551615", prefix, p), "\x00not json", 0)
	}
	mc.Set(prefix+"id", "18446744073709551615", 0)
	mc.Set(prefix+"nodes", forged+" "+strings.Repeat("z", 300)+" ../x", 0)
	mc.Set(prefix+"node:"+forged, `{"gen":18446744073709551615,"chunks":64,"id_high":18446744073709551615}`, 0)
	mc.Set(prefix+"node:"+forged+":0", `{"gen":1,"rooms":{"lobby":{"n":10000000,"m":[{"id":"1","nick":"\u202eevil"}]}}}`, 0)
	mc.Set(prefix+"hist:lobby", `{"events":[{"kind":"chat","id":"x","msg":"`+strings.Repeat("m", 5000)+`"}]}`, 0)

	p1 := startCaddyCluster(t, "ttl 3s", mc.Addr)
	p2 := startCaddyCluster(t, "ttl 3s", mc.Addr)
	// The first join of each instance starts its backend: it must be
	// answered within the start bound, not after the relay caught up.
	join := func(p *caddyProc) (*wsClient, string) {
		start := time.Now()
		c, resp, err := tryDial(t, p.url("ws", "/ws"), nil)
		if err != nil {
			t.Fatalf("join on a poisoned memcached: %v (response %v) after %v", err, resp, time.Since(start))
		}
		id, _ := c.login()
		if d := time.Since(start); d > 8*time.Second {
			t.Fatalf("join on a poisoned memcached took %v", d)
		}
		return c, id
	}
	a, aid := join(p1)
	b, bid := join(p2)
	if aid == bid {
		t.Fatalf("both instances handed out id %s", aid)
	}
	crossesWithin(t, a, aid, b, "p1→p2 on a poisoned memcached")
	crossesWithin(t, b, bid, a, "p2→p1 on a poisoned memcached")
}
