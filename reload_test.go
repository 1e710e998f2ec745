package chatroom

// Tests of reload.go: what a reload leaves behind while connections from
// before it stay open.

import (
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"
)

// heapInuse forces a GC in Caddy and returns its heap in use, in bytes.
func heapInuse(t *testing.T, p *caddyProc) float64 {
	t.Helper()
	n, err := p.c.HeapInuse()
	if err != nil {
		t.Fatal(err)
	}
	return float64(n)
}

// TestReloadsDoNotAccumulate: 200 reloads with three members connected
// throughout leave the heap in use within 10% of where it was. Each
// reload's handler used to stay reachable from the connections of the one
// before (about 45 KiB a reload), so that a site reloaded by automation
// grew without bound while its members stayed.
func TestReloadsDoNotAccumulate(t *testing.T) {
	body := func(n int) string {
		return fmt.Sprintf("\theader X-Config r%d\n", n) + faultSite()
	}
	p := startCaddy(t, body(0))
	rc := joinRoom(t, p.url("ws", "/ws"), 3)

	// A few reloads first, so that what Caddy makes once on the first
	// reloads (caches, pools) is in the baseline.
	const warmup, reloads = 20, 200
	n := 0
	reload := func() {
		t.Helper()
		n++
		// Caddy replaces its admin server at every load: a request that
		// reaches the old one as it stops is cut (EOF, reset), unread.
		// Only such a request is sent again.
		for try := 1; ; try++ {
			err := p.c.Reload(p.siteConfig(body(n)))
			if err == nil {
				return
			}
			if try == 3 || !(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)) {
				t.Fatalf("reload %d: %v", n, err)
			}
		}
	}
	for range warmup {
		reload()
	}
	awaitHeader(t, p, "X-Config", fmt.Sprintf("r%d", n))
	before := heapInuse(t, p)
	for range reloads {
		reload()
	}
	awaitHeader(t, p, "X-Config", fmt.Sprintf("r%d", n))
	after := heapInuse(t, p)

	// The members are still there, and still chat through the handler of
	// the last config.
	rc.clients[0].send(map[string]any{"msg": "after the reloads"})
	for _, c := range rc.clients[1:] {
		c.await("the message after the reloads", isChat(rc.ids[0], "after the reloads"))
	}
	t.Logf("heap in use after GC: %.2f MiB before %d reloads, %.2f MiB after (%+.1f KiB a reload)",
		before/(1<<20), reloads, after/(1<<20), (after-before)/1024/reloads)
	if after > before*1.10 {
		t.Fatalf("heap in use grew from %.2f to %.2f MiB over %d reloads with 3 members connected; want within 10%%",
			before/(1<<20), after/(1<<20), reloads)
	}
}
