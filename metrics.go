package chatroom

import (
	"errors"
	"fmt"

	"github.com/caddy-chatroom/chatroom/internal/memcached"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the module's Prometheus collectors. They are made once per
// process (see pool.go) and registered with each config's registry, so their
// values survive reloads.
type metrics struct {
	connections     prometheus.Gauge
	rooms           prometheus.Gauge
	received        prometheus.Counter
	rateLimited     prometheus.Counter
	delivered       prometheus.Counter
	dropped         *prometheus.CounterVec
	memcachedErrors prometheus.Counter
	// memcachedRequests counts round trips to memcached by kind.
	memcachedRequests *prometheus.CounterVec
	// memcachedRejected counts values read from memcached and dropped.
	memcachedRejected *prometheus.CounterVec
	// relaySkipped counts relay log entries given up.
	relaySkipped prometheus.Counter
	// chatLost counts chat seqs a room's order gave up waiting for.
	chatLost prometheus.Counter
}

const metricsNamespace = "caddy"
const metricsSubsystem = "chatroom"

func newMetrics() *metrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}
	}
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts(opts("connections_open",
			"Chat WebSocket connections open on this instance."))),
		rooms: prometheus.NewGauge(prometheus.GaugeOpts(opts("rooms_open",
			"Chat rooms with members on this instance."))),
		received: prometheus.NewCounter(prometheus.CounterOpts(opts("messages_received_total",
			"Chat messages received from clients and accepted for relay."))),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts(opts("messages_rate_limited_total",
			"Chat messages and renames dropped because their sender exceeded rate_limit."))),
		delivered: prometheus.NewCounter(prometheus.CounterOpts(opts("frames_delivered_total",
			"Frames written to clients."))),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts(opts("clients_dropped_total",
			"Connections closed by the server, by reason.")), []string{"reason"}),
		memcachedErrors: prometheus.NewCounter(prometheus.CounterOpts(opts("memcached_errors_total",
			"Failed memcached requests."))),
		memcachedRequests: prometheus.NewCounterVec(prometheus.CounterOpts(opts("memcached_requests_total",
			"Round trips to memcached, by kind of request.")), []string{"kind"}),
		memcachedRejected: prometheus.NewCounterVec(prometheus.CounterOpts(opts("memcached_values_rejected_total",
			"Values read from memcached and dropped as malformed, oversized, out of range or forged, by what they were.")), []string{"value"}),
		relaySkipped: prometheus.NewCounter(prometheus.CounterOpts(opts("relay_entries_skipped_total",
			"Times the cluster relay gave log entries up: never written, expired, or beyond what one poll reads after a counter jumped."))),
		chatLost: prometheus.NewCounter(prometheus.CounterOpts(opts("chat_messages_lost_total",
			"Chat messages of other instances that a room's order waited for in vain and gave up (a writer that died, an entry lost with a memcached server); a counter made anew counts once."))),
	}
	for _, kind := range memcached.RequestKinds {
		m.memcachedRequests.WithLabelValues(kind)
	}
	for _, what := range memcached.RejectedKinds {
		m.memcachedRejected.WithLabelValues(what)
	}
	for _, reason := range []string{dropSlowConsumer, dropTooBig, dropBinary, dropBadUTF8, dropIdle, dropShutdown, dropWriteError, dropReplaysBusy, dropBadDeflate} {
		m.dropped.WithLabelValues(reason)
	}
	return m
}

// register adds the collectors to reg; collectors already there (from an
// earlier provisioning of the same config) are fine.
func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.connections, m.rooms, m.received, m.rateLimited, m.delivered, m.dropped, m.memcachedErrors,
		m.memcachedRequests, m.memcachedRejected, m.relaySkipped, m.chatLost} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return fmt.Errorf("registering chatroom metrics: %w", err)
			}
		}
	}
	return nil
}

// memcached returns the collectors the memcached backend reports to.
func (m *metrics) memcached() *memcached.Metrics {
	return &memcached.Metrics{
		Requests: m.memcachedRequests,
		Errors:   m.memcachedErrors,
		Rejected: m.memcachedRejected,
		Skipped:  m.relaySkipped,
		Lost:     m.chatLost,
	}
}

// Reasons a connection is closed, as counted in metrics.
const (
	dropSlowConsumer = "slow_consumer"
	dropTooBig       = "message_too_big"
	dropBinary       = "binary_frame"
	dropBadUTF8      = "invalid_utf8"
	dropIdle         = "idle"
	dropShutdown     = "shutdown"
	dropWriteError   = "write_error"
	dropBadDeflate   = "bad_deflate"
)

// dropReload is the metrics reason of a client closed because the handler
// it came through is gone from the config.
const dropReload = "reload"

// dropReplaysBusy is the metrics reason of a resume refused with
// errReplaysBusy (resume.go).
const dropReplaysBusy = "replays_busy"
