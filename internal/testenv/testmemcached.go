package testenv

import (
	"os"
	"testing"
	"time"
)

// TestMemcached is a Memcached for one test: where Memcached returns an
// error its methods fail the test, so that a test reads as a list of steps.
// The tests of every package that talks to memcached share it.
type TestMemcached struct {
	// Addr is the server's address, 127.0.0.1:port.
	Addr string

	m *Memcached
	t testing.TB
}

// StartMemcached starts a memcached for a test, with two threads, and stops
// it when the test ends. Without a memcached binary the test is skipped, or
// fails when CHATROOM_REQUIRE_MEMCACHED=1 (as in CI, where a skip would
// hide the cluster tests).
func StartMemcached(t testing.TB) *TestMemcached {
	t.Helper()
	m, err := NewMemcached(t.TempDir(), MemcachedOptions{MemoryMB: 64, Connections: 1024, Threads: 2})
	if err != nil {
		if os.Getenv("CHATROOM_REQUIRE_MEMCACHED") == "1" {
			t.Fatal(err.Error() + " (CHATROOM_REQUIRE_MEMCACHED=1)")
		}
		t.Skip(err.Error())
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	tm := &TestMemcached{Addr: m.Addr, m: m, t: t}
	t.Cleanup(tm.Stop)
	return tm
}

// Start starts the server again on its port; it must not be running. A
// server started again has lost every key.
func (m *TestMemcached) Start() {
	m.t.Helper()
	if err := m.m.Start(); err != nil {
		m.t.Fatal(err)
	}
}

// Freeze stops the server's process until Thaw; the test thaws it when it
// ends, before it stops it.
func (m *TestMemcached) Freeze() {
	m.t.Helper()
	if err := m.m.Freeze(); err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { _ = m.m.Thaw() })
}

// Thaw lets a frozen server go on.
func (m *TestMemcached) Thaw() {
	m.t.Helper()
	if err := m.m.Thaw(); err != nil {
		m.t.Fatal(err)
	}
}

// Stop kills the server, losing every key. It is safe to call when the
// server is not running.
func (m *TestMemcached) Stop() {
	m.t.Helper()
	if err := m.m.Stop(); err != nil {
		m.t.Error(err)
	}
}

// Command sends one text-protocol command, as Memcached.Command does; it
// returns the error rather than failing the test, for tests that expect one.
func (m *TestMemcached) Command(cmd string) ([]string, error) { return m.m.Command(cmd) }

// Keys lists every key the server holds, sorted.
func (m *TestMemcached) Keys() []string {
	m.t.Helper()
	keys, err := m.m.Keys()
	if err != nil {
		m.t.Fatal(err)
	}
	return keys
}

// Set stores a key directly, bypassing the module: for keys the module must
// leave alone or must survive finding.
func (m *TestMemcached) Set(key, value string, ttl int) {
	m.t.Helper()
	if err := m.m.Set(key, value, ttl); err != nil {
		m.t.Fatal(err)
	}
}

// Incr adds delta to the counter at key and returns the new value.
func (m *TestMemcached) Incr(key string, delta uint64) uint64 {
	m.t.Helper()
	n, err := m.m.Incr(key, delta)
	if err != nil {
		m.t.Fatal(err)
	}
	return n
}

// Get returns a key's value, or "" when the server does not hold it.
func (m *TestMemcached) Get(key string) string {
	m.t.Helper()
	v, _, err := m.m.Get(key)
	if err != nil {
		m.t.Fatal(err)
	}
	return v
}

// Has reports whether the server holds key.
func (m *TestMemcached) Has(key string) bool {
	m.t.Helper()
	_, ok, err := m.m.Get(key)
	if err != nil {
		m.t.Fatal(err)
	}
	return ok
}

// Stats returns the server's general statistics (cmd_get, cmd_set, ...).
func (m *TestMemcached) Stats() map[string]uint64 {
	m.t.Helper()
	stats, err := m.m.Stats()
	if err != nil {
		m.t.Fatal(err)
	}
	return stats
}

// AwaitCondition polls cond until it holds, failing the test after
// WaitLong: for state that has no event to await (memcached's keys, a
// backend's outbox, a goroutine count).
func AwaitCondition(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(WaitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, WaitLong)
		}
		time.Sleep(20 * time.Millisecond) // polling: there is no event to await
	}
}
