package memcached

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the collectors the backend reports to; the handler makes
// them once per process and registers them. A nil field is not reported.
type Metrics struct {
	// Requests counts round trips to memcached by kind (get, get_multi,
	// set, add, cas, touch, delete, incr).
	Requests *prometheus.CounterVec
	// Errors counts failed requests.
	Errors prometheus.Counter
	// Rejected counts values read from memcached that were dropped as
	// malformed, oversized, out of range or forged, by what they were.
	Rejected *prometheus.CounterVec
	// Skipped counts relay log entries given up: never written, expired,
	// or beyond what one poll reads after a counter jumped.
	Skipped prometheus.Counter
	// Lost counts chat seqs a room's order gave up waiting for.
	Lost prometheus.Counter
}

// RequestKinds lists the label values of Requests.
var RequestKinds = []string{"get", "get_multi", "set", "add", "cas", "touch", "delete", "incr"}

// RejectedKinds lists the label values of Rejected.
var RejectedKinds = []string{"counter", "index", "snapshot", "entry", "history"}

func (m *Metrics) request(kind string) {
	if m != nil && m.Requests != nil {
		m.Requests.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) error() {
	if m != nil && m.Errors != nil {
		m.Errors.Inc()
	}
}

func (m *Metrics) rejected(what string) {
	if m != nil && m.Rejected != nil {
		m.Rejected.WithLabelValues(what).Inc()
	}
}

func (m *Metrics) skipped(n uint64) {
	if m != nil && m.Skipped != nil {
		m.Skipped.Add(float64(n))
	}
}

func (m *Metrics) lost(n uint64) {
	if m != nil && m.Lost != nil {
		m.Lost.Add(float64(n))
	}
}
