package chatroom

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// pool holds what must outlive one loaded config: the hubs, keyed by their
// registry configuration, and the process's metrics. Caddy provisions a new
// config before it cleans up the old one, so a reload with the same registry
// configuration finds the same hub and its open connections carry on.
var pool = caddy.NewUsagePool()

// metricsKey is the pool key of the process's metrics.
const metricsKey = "chatroom.metrics"

// shutdownTimeout bounds how long closing every client may take when the
// last config using a hub is unloaded.
const shutdownTimeout = 5 * time.Second

// pooledMetrics lets metrics live in the pool.
type pooledMetrics struct{ *metrics }

// Destruct implements caddy.Destructor.
func (pooledMetrics) Destruct() error { return nil }

// pooledHub lets a hub live in the pool: when the last config using it is
// unloaded, its clients are closed with 1001 and its registry deregisters
// this instance.
type pooledHub struct{ *hub }

// Destruct implements caddy.Destructor.
func (p pooledHub) Destruct() error {
	p.shutdown(shutdownTimeout)
	if err := p.reg.Close(); err != nil {
		return fmt.Errorf("closing chat registry: %w", err)
	}
	return nil
}

// loadMetrics returns the process's metrics, making them on first use.
func loadMetrics() (*metrics, error) {
	v, _, err := pool.LoadOrNew(metricsKey, func() (caddy.Destructor, error) {
		return pooledMetrics{newMetrics()}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(pooledMetrics).metrics, nil
}

// loadHub returns the hub for key, making it with newRegistry on first use.
func loadHub(key string, m *metrics, logger *zap.Logger, newRegistry func() (Registry, error)) (*hub, error) {
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		reg, err := newRegistry()
		if err != nil {
			return nil, err
		}
		return pooledHub{newHub(reg, m, logger)}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(pooledHub).hub, nil
}
