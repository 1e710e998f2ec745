package chatroom

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// BenchmarkCluster measures a two-instance cluster on loopback: what an
// idle instance costs memcached, and cross-instance delivery latency and
// memcached load under a steady chat load. Run it once:
//
//	go test -run '^$' -bench BenchmarkCluster -benchtime 1x .
func BenchmarkCluster(b *testing.B) {
	for i := 0; i < b.N; i++ {
		benchCluster(b)
	}
}

// memcachedCommands sums the commands in a memcached stats snapshot; a
// multi-get counts once per key, as memcached counts it.
func memcachedCommands(s map[string]uint64) uint64 {
	var n uint64
	for _, k := range []string{"cmd_get", "cmd_set", "cmd_touch", "incr_hits", "incr_misses",
		"delete_hits", "delete_misses", "cas_hits", "cas_misses", "cas_badval"} {
		n += s[k]
	}
	return n
}

// commandRate measures memcached commands per second over d.
func commandRate(mc *testenv.TestMemcached, d time.Duration) float64 {
	before := memcachedCommands(mc.Stats())
	time.Sleep(d) // measuring a rate over a fixed window
	after := memcachedCommands(mc.Stats())
	return float64(after-before) / d.Seconds()
}

func benchCluster(b *testing.B) {
	const window = 5 * time.Second
	mc := testenv.StartMemcached(b)
	p1 := startCaddyCluster(b, "", mc.Addr)

	// One instance, started (a client came and went), no members.
	c := dial(b, p1.url("ws", "/ws"), nil)
	c.login()
	_ = c.conn.Close()
	time.Sleep(11 * time.Second) // until the room is no longer followed (the backend keeps a warmed room 10s)
	idleEmpty := commandRate(mc, window)

	// One instance with a member in a room without traffic.
	c = dial(b, p1.url("ws", "/ws"), nil)
	c.login()
	time.Sleep(4 * time.Second) // until the poll slows down (3s after the last event)
	idleMember := commandRate(mc, window)

	// Two instances: senders on p1, a receiver on p2.
	p2 := startCaddyCluster(b, "", mc.Addr)
	recv := dial(b, p2.url("ws", "/ws"), nil)
	recv.login()
	const senders, perSecond = 10, 10 // 100 messages/s, within each sender's rate_limit
	clients := make([]*wsClient, senders)
	for i := range clients {
		clients[i] = dial(b, p1.url("ws", "/ws"), nil)
		clients[i].login()
	}
	const warmUp = time.Second
	var latencies []time.Duration
	var mu sync.Mutex
	start := time.Now()
	steady := start.Add(warmUp)
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.After(warmUp + window + 3*time.Second)
		for {
			select {
			case data := <-recv.frames:
				s := string(data)
				i := strings.Index(s, "sent=")
				if i < 0 {
					continue
				}
				j := strings.IndexByte(s[i:], '"')
				ns, err := strconv.ParseInt(s[i+5:i+j], 10, 64)
				// The first second warms up: the receiving instance
				// still polls at its idle period.
				if err == nil && time.Unix(0, ns).After(steady) {
					mu.Lock()
					latencies = append(latencies, time.Since(time.Unix(0, ns)))
					mu.Unlock()
				}
			case <-deadline:
				return
			}
		}
	}()
	var before uint64
	var wg sync.WaitGroup
	for _, s := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / perSecond)
			defer tick.Stop()
			for time.Since(start) < warmUp+window {
				<-tick.C
				s.send(map[string]any{"msg": fmt.Sprintf("sent=%d", time.Now().UnixNano())})
			}
		}()
	}
	time.Sleep(warmUp) // measuring a rate over a fixed window
	before = memcachedCommands(mc.Stats())
	wg.Wait()
	busy := float64(memcachedCommands(mc.Stats())-before) / time.Since(steady).Seconds()
	<-done

	mu.Lock()
	defer mu.Unlock()
	sent := senders * perSecond * int(window/time.Second)
	if len(latencies) == 0 {
		b.Fatal("no message crossed instances")
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	pct := func(p float64) time.Duration { return latencies[int(p*float64(len(latencies)-1))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(idleEmpty, "idle-empty-cmd/s")
	b.ReportMetric(idleMember, "idle-member-cmd/s")
	b.ReportMetric(busy, "busy-cluster-cmd/s")
	b.Logf("cross-instance delivery of %d messages (senders aimed at %d in the window) at %d msg/s after a %v warm-up: p50 %v, p99 %v, max %v",
		len(latencies), sent, senders*perSecond, warmUp, pct(0.50), pct(0.99), latencies[len(latencies)-1])
	b.Logf("memcached commands/s: idle instance without members %.1f, idle instance with a member %.1f, busy two-instance cluster %.1f",
		idleEmpty, idleMember, busy)
}
