package chatroom

import (
	"errors"
	"time"

	"go.uber.org/zap"
)

// memcachedConfig is what the memcached registry needs from the handler.
type memcachedConfig struct {
	// Servers are the memcached addresses, host:port, in cluster order.
	Servers []string
	// Prefix namespaces every key the registry writes.
	Prefix string
	// TTL is the lifetime of this instance's keys, refreshed while it runs.
	TTL time.Duration
}

// newMemcachedRegistry makes the cluster registry.
func newMemcachedRegistry(cfg memcachedConfig, m *metrics, logger *zap.Logger) (Registry, error) {
	return nil, errors.New("memcached registry: not built yet")
}
