package chatroom

// The memcached side of the integration harness: a real memcached process on
// a free loopback port that a test can stop and start again on the same port
// (a restart loses every key), and a way to list its keys.

import (
	"bufio"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// memcachedProc is one memcached server under test.
type memcachedProc struct {
	t    testing.TB
	bin  string
	Addr string // 127.0.0.1:port
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
}

// startMemcached starts a memcached on a free loopback port and stops it
// when the test ends. Without a memcached binary the test is skipped, or
// fails when CHATROOM_REQUIRE_MEMCACHED=1.
func startMemcached(t testing.TB) *memcachedProc {
	t.Helper()
	bin, err := exec.LookPath("memcached")
	if err != nil {
		msg := "memcached not found in PATH (install it, e.g. apt-get install memcached): " + err.Error()
		if os.Getenv("CHATROOM_REQUIRE_MEMCACHED") == "1" {
			t.Fatal(msg + " (CHATROOM_REQUIRE_MEMCACHED=1)")
		}
		t.Skip(msg)
	}
	m := &memcachedProc{t: t, bin: bin, port: freePort(t)}
	m.Addr = fmt.Sprintf("127.0.0.1:%d", m.port)
	m.start()
	t.Cleanup(m.stop)
	return m
}

// start starts the server on its port; it must not be running. A server
// started again has lost every key.
func (m *memcachedProc) start() {
	m.t.Helper()
	m.mu.Lock()
	if m.cmd != nil {
		m.mu.Unlock()
		m.t.Fatal("memcached already running")
	}
	out := &syncBuffer{}
	cmd := exec.Command(m.bin, "-l", "127.0.0.1", "-p", strconv.Itoa(m.port), "-U", "0", "-m", "16", "-c", "256", "-t", "2")
	if os.Geteuid() == 0 {
		cmd.Args = append(cmd.Args, "-u", "root") // memcached refuses to run as root otherwise
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		m.mu.Unlock()
		m.t.Fatalf("starting memcached: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	m.cmd, m.done, m.out = cmd, done, out
	m.mu.Unlock()

	deadline := time.Now().Add(waitLong)
	for {
		select {
		case <-done:
			m.mu.Lock()
			m.cmd = nil
			m.mu.Unlock()
			m.t.Fatalf("memcached exited while starting:\n%s", out)
		default:
		}
		if _, err := m.command("version"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("memcached did not answer on %s within %v\n%s", m.Addr, waitLong, out)
		}
		time.Sleep(10 * time.Millisecond) // polling a port: there is no event to await
	}
}

// stop kills the server, losing every key. It is safe to call when the
// server is not running.
func (m *memcachedProc) stop() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(waitLong):
		m.t.Errorf("memcached did not exit within %v", waitLong)
	}
}

// command sends one text-protocol command and returns the reply lines up to
// END (or the single reply line of commands without one).
func (m *memcachedProc) command(cmd string) ([]string, error) {
	c, err := net.DialTimeout("tcp", m.Addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitLong))
	if _, err := fmt.Fprintf(c, "%s\r\n", cmd); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	var lines []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return lines, fmt.Errorf("memcached %q: %w", cmd, err)
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "END":
			return lines, nil
		case strings.HasPrefix(line, "ERROR"), strings.HasPrefix(line, "CLIENT_ERROR"), strings.HasPrefix(line, "SERVER_ERROR"):
			return lines, fmt.Errorf("memcached %q: %s", cmd, line)
		case strings.HasPrefix(line, "VERSION "), line == "STORED", line == "NOT_STORED", line == "DELETED", line == "NOT_FOUND", line == "OK":
			return append(lines, line), nil
		}
		lines = append(lines, line)
	}
}

// keys lists every key the server holds, sorted, with memcached's
// `lru_crawler metadump all` (a debugging command: tests only).
func (m *memcachedProc) keys() []string {
	m.t.Helper()
	lines, err := m.command("lru_crawler metadump all")
	if err != nil {
		m.t.Fatalf("listing memcached keys: %v", err)
	}
	var keys []string
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "key=") {
			continue
		}
		k, err := url.QueryUnescape(strings.TrimPrefix(f[0], "key="))
		if err != nil {
			m.t.Fatalf("memcached metadump key %q: %v", f[0], err)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// set stores a key directly, bypassing the module: for keys that the module
// must leave alone.
func (m *memcachedProc) set(key, value string, ttl int) {
	m.t.Helper()
	lines, err := m.command(fmt.Sprintf("set %s 0 %d %d\r\n%s", key, ttl, len(value), value))
	if err != nil || len(lines) != 1 || lines[0] != "STORED" {
		m.t.Fatalf("memcached set %s: %v %v", key, lines, err)
	}
}

// has reports whether the server holds key.
func (m *memcachedProc) has(key string) bool {
	m.t.Helper()
	lines, err := m.command("get " + key)
	if err != nil {
		m.t.Fatalf("memcached get %s: %v", key, err)
	}
	return len(lines) > 0
}

// stats returns the server's general statistics (cmd_get, cmd_set, ...).
func (m *memcachedProc) stats() map[string]uint64 {
	m.t.Helper()
	lines, err := m.command("stats")
	if err != nil {
		m.t.Fatalf("memcached stats: %v", err)
	}
	out := make(map[string]uint64)
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "STAT" {
			if n, err := strconv.ParseUint(f[2], 10, 64); err == nil {
				out[f[1]] = n
			}
		}
	}
	return out
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

// TestMemcachedHarness checks the harness itself: keys are listed, a restart
// on the same port loses them.
func TestMemcachedHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	m := startMemcached(t)
	m.set("harness:a", "1", 0)
	m.set("other:b", "2", 0)
	if got := m.keys(); len(got) != 2 || got[0] != "harness:a" || got[1] != "other:b" {
		t.Fatalf("keys = %q, want [harness:a other:b]", got)
	}
	m.stop()
	if _, err := m.command("version"); err == nil {
		t.Fatal("memcached still answers after stop")
	}
	m.start()
	if got := m.keys(); len(got) != 0 {
		t.Fatalf("keys after restart = %q, want none", got)
	}
	if m.stats()["pid"] == 0 {
		t.Fatal("stats has no pid")
	}
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
