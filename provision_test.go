package chatroom

import (
	"context"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestFailedProvisionReleasesMetricsOnce provisions a handler whose
// registry cannot be made, then cleans it up as Caddy does after a failed
// Provision: the process's metrics must be released once, not twice, or a
// config still using them would lose them.
func TestFailedProvisionReleasesMetricsOnce(t *testing.T) {
	held, err := loadMetrics() // as a running config would hold them
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = pool.Delete(metricsKey) }()
	before, _ := pool.References(metricsKey)

	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	// Go refuses to resolve .onion names at once, so the memcached client
	// cannot be made and Provision fails after taking the metrics.
	h := &Handler{Memcached: []string{"chat.onion:11211"}}
	if err := h.Provision(ctx); err == nil {
		t.Fatal("Provision with an unresolvable memcached server succeeded")
	}
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	after, ok := pool.References(metricsKey)
	if !ok || after != before {
		t.Fatalf("metrics references %d (present %v) after a failed Provision and its Cleanup, want %d", after, ok, before)
	}
	if got, _ := loadMetrics(); got != held {
		t.Fatal("the metrics were destroyed and made again: counters would reset")
	}
	_, _ = pool.Delete(metricsKey)
}
