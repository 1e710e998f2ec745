package chatroom

import (
	"fmt"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/wsio"
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

// pooledHub lets a hub and the transport of its connections live in the
// pool: when the last config using them is unloaded, the hub's clients are
// closed with 1001, the transport's poller stops and the registry
// deregisters this instance.
type pooledHub struct {
	*hub
	transport *wsio.Transport
}

// Destruct implements caddy.Destructor.
func (p pooledHub) Destruct() error {
	p.shutdown(shutdownTimeout)
	p.transport.Close()
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

// loadHub returns the hub for key and its connections' transport, making
// them with newRegistry on first use.
func loadHub(key string, m *metrics, logger *zap.Logger, newRegistry func() (registry, error)) (*hub, *wsio.Transport, error) {
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		reg, err := newRegistry()
		if err != nil {
			return nil, err
		}
		return pooledHub{newHub(reg, m, logger), wsio.NewTransport(logger)}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return v.(pooledHub).hub, v.(pooledHub).transport, nil
}
