package chatroom

// The memcached side of the integration harness: a real memcached process
// (internal/testenv) on a free loopback port that a test can stop and start
// again on the same port (a restart loses every key), and a way to list its
// keys. The helpers here keep the tests' short names over testenv.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// memcachedProc is one memcached server under test: testenv.Memcached
// failing the test on an error.
type memcachedProc struct {
	*testenv.Memcached
	t testing.TB
}

// startMemcached starts a memcached on a free loopback port and stops it
// when the test ends. Without a memcached binary the test is skipped, or
// fails when CHATROOM_REQUIRE_MEMCACHED=1.
func startMemcached(t testing.TB) *memcachedProc {
	t.Helper()
	return &memcachedProc{Memcached: testenv.StartMemcached(t), t: t}
}

// start starts the server on its port; it must not be running. A server
// started again has lost every key.
func (m *memcachedProc) start() {
	m.t.Helper()
	if err := m.Start(); err != nil {
		m.t.Fatal(err)
	}
}

// stop kills the server, losing every key. It is safe to call when the
// server is not running.
func (m *memcachedProc) stop() {
	if err := m.Stop(); err != nil {
		m.t.Error(err)
	}
}

// command sends one text-protocol command and returns the reply lines up to
// END (or the single reply line of commands without one).
func (m *memcachedProc) command(cmd string) ([]string, error) {
	return m.Command(cmd)
}

// keys lists every key the server holds, sorted.
func (m *memcachedProc) keys() []string {
	m.t.Helper()
	keys, err := m.Keys()
	if err != nil {
		m.t.Fatal(err)
	}
	return keys
}

// set stores a key directly, bypassing the module: for keys that the module
// must leave alone.
func (m *memcachedProc) set(key, value string, ttl int) {
	m.t.Helper()
	if err := m.Set(key, value, ttl); err != nil {
		m.t.Fatal(err)
	}
}

// has reports whether the server holds key.
func (m *memcachedProc) has(key string) bool {
	m.t.Helper()
	_, ok, err := m.Get(key)
	if err != nil {
		m.t.Fatal(err)
	}
	return ok
}

// stats returns the server's general statistics (cmd_get, cmd_set, ...).
func (m *memcachedProc) stats() map[string]uint64 {
	m.t.Helper()
	stats, err := m.Stats()
	if err != nil {
		m.t.Fatal(err)
	}
	return stats
}

// startCaddyCluster starts a Caddy process whose chatroom at /ws uses the
// memcached servers at addrs; extra is added to the chatroom block (e.g.
// "ttl 2s\n\thistory 10"). Its page is served from {{root}}.
func startCaddyCluster(t testing.TB, extra string, addrs ...string) *caddyProc {
	t.Helper()
	return startCaddy(t, clusterSiteBody(extra, addrs...))
}

// clusterSiteBody is the site body of a cluster member, for startCaddy and
// reload.
func clusterSiteBody(extra string, addrs ...string) string {
	return fmt.Sprintf("\troot * {{root}}\n\tchatroom /ws {\n\t\tmemcached %s\n\t\troom {query.room}\n\t\t%s\n\t}\n\tfile_server",
		strings.Join(addrs, " "), extra)
}

// get returns a key's value, or "" when it is missing.
func (m *memcachedProc) get(key string) string {
	m.t.Helper()
	lines, err := m.command("get " + key)
	if err != nil {
		m.t.Fatalf("memcached get %s: %v", key, err)
	}
	if len(lines) < 2 {
		return ""
	}
	return lines[1]
}

// awaitCondition polls cond until it holds: for state that has no event.
func awaitCondition(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitLong)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
