package memcached

// A minimal memcached starter for this package's tests: a real memcached
// process on a free loopback port that a test can stop and start again on
// the same port (a restart loses every key), and the text-protocol
// commands the tests need to read, write and list keys behind the
// backend's back.

import (
	"bufio"
	"bytes"
	"context"
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

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"go.uber.org/zap/zaptest"
)

const waitLong = 15 * time.Second

// memcachedProc is one memcached server under test.
type memcachedProc struct {
	t    testing.TB
	bin  string
	Addr string
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *lockedBuffer
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startMemcached starts a memcached on a free loopback port and stops it
// when the test ends. Without a memcached binary the test is skipped, or
// fails when CHATROOM_REQUIRE_MEMCACHED=1.
func startMemcached(t testing.TB) *memcachedProc {
	t.Helper()
	bin, err := exec.LookPath("memcached")
	if err != nil {
		msg := "memcached not found in PATH: " + err.Error()
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

func (m *memcachedProc) start() {
	m.t.Helper()
	m.mu.Lock()
	if m.cmd != nil {
		m.mu.Unlock()
		m.t.Fatal("memcached already running")
	}
	out := &lockedBuffer{}
	cmd := exec.Command(m.bin, "-l", "127.0.0.1", "-p", strconv.Itoa(m.port), "-U", "0", "-m", "64", "-c", "1024", "-t", "2")
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

// stop kills the server, losing every key.
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

// keys lists every key the server holds, sorted (lru_crawler metadump: a
// debugging command, for tests only).
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

// set stores a key directly, bypassing the backend.
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

// recordingHost is a cluster.Handler that keeps what it is delivered.
type recordingHost struct {
	mu     sync.Mutex // orders updates as the hub's room lock does
	events chan hostEvent
}

type hostEvent struct {
	room string
	ev   *chat.Event
}

func newRecordingHost() *recordingHost { return &recordingHost{events: make(chan hostEvent, 100000)} }

// DeliverWith implements cluster.Handler.
func (h *recordingHost) DeliverWith(room string, update func() []*chat.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ev := range update() {
		h.events <- hostEvent{room, ev}
	}
}

// await returns the first delivered event that match accepts, skipping
// others, and fails after waitLong.
func (h *recordingHost) await(t testing.TB, what string, match func(hostEvent) bool) hostEvent {
	t.Helper()
	deadline := time.After(waitLong)
	for {
		select {
		case e := <-h.events:
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s delivered within %v", what, waitLong)
		}
	}
}

// memHistory is a cluster.History in memory, as simple as can be.
type memHistory struct {
	mu   sync.Mutex
	keep int
	ev   map[string][]*chat.Event
	gaps map[string]bool
}

func (m *memHistory) Publish(room string, ev *chat.Event) {
	if ev.Kind != chat.KindChat {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keep == 0 {
		return
	}
	l := append(m.ev[room], ev)
	if len(l) > m.keep {
		l = l[len(l)-m.keep:]
	}
	m.ev[room] = l
}

func (m *memHistory) History(room string, n int) []*chat.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.ev[room]
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return append([]*chat.Event(nil), l...)
}

func (m *memHistory) Replace(room string, events []*chat.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ev[room] = append([]*chat.Event(nil), events...)
}

func (m *memHistory) KeepHistory(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keep = max(m.keep, n)
}

func (m *memHistory) Since(room string, after uint64) ([]*chat.Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*chat.Event
	for _, ev := range m.ev[room] {
		if ev.Seq > after {
			out = append(out, ev)
		}
	}
	return out, !m.gaps[room]
}

func (m *memHistory) KeepWindow(time.Duration) {}

func (m *memHistory) Window() time.Duration { return DefaultResumeWindow }

func (m *memHistory) MarkGap(room string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gaps == nil {
		m.gaps = make(map[string]bool)
	}
	m.gaps[room] = true
}

func (m *memHistory) Kept() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.keep
}

// testBackend is a started backend with its recorder.
type testBackend struct {
	*Backend
	host *recordingHost
}

func newTestBackend(t testing.TB, addrs []string, prefix string, ttl time.Duration) *testBackend {
	t.Helper()
	b, err := New(Config{Servers: addrs, Prefix: prefix, TTL: ttl, MaxMessageSize: 8 << 10,
		History: &memHistory{ev: make(map[string][]*chat.Event)}}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	r := &testBackend{Backend: b, host: newRecordingHost()}
	if err := r.Start(r.host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// join publishes a member joining room, as the hub does.
func (r *testBackend) join(room, id, nick string) {
	r.Warm(context.Background(), room)
	r.Publish(room, &chat.Event{Kind: chat.KindJoin, ID: id, Nick: nick})
}

// flushed waits until the backend has written its outbox to memcached.
func (r *testBackend) flushed(t testing.TB) {
	t.Helper()
	awaitCondition(t, "outbox written to memcached", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.outbox) == 0 && !r.writing
	})
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

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
}

func hasMember(members []chat.Member, id string) bool {
	for _, m := range members {
		if m.ID == id {
			return true
		}
	}
	return false
}

// drain returns what was delivered so far without waiting.
func (h *recordingHost) drain() []hostEvent {
	var out []hostEvent
	for {
		select {
		case e := <-h.events:
			out = append(out, e)
		default:
			return out
		}
	}
}
