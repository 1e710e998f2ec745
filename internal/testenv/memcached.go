package testenv

import (
	"bufio"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MemcachedOptions size a memcached server.
type MemcachedOptions struct {
	// MemoryMB is the cache size (-m); 16 when zero.
	MemoryMB int
	// Connections is the connection limit (-c); 256 when zero.
	Connections int
	// Threads is the number of worker threads (-t); memcached's default
	// when zero.
	Threads int
}

// Memcached is a memcached server on a fixed loopback port, which can be
// stopped and started again on it (a restart loses every key).
type Memcached struct {
	// Addr is the server's address, 127.0.0.1:port.
	Addr string

	bin  string
	dir  string
	port int
	opts MemcachedOptions

	mu   sync.Mutex
	proc *Process // nil while stopped
}

// NewMemcached finds the memcached binary and picks a free port; Start
// starts the server.
func NewMemcached(dir string, opts MemcachedOptions) (*Memcached, error) {
	bin, err := exec.LookPath("memcached")
	if err != nil {
		return nil, fmt.Errorf("memcached not found in PATH (install it, e.g. apt-get install memcached): %w", err)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	if opts.MemoryMB == 0 {
		opts.MemoryMB = 16
	}
	if opts.Connections == 0 {
		opts.Connections = 256
	}
	return &Memcached{Addr: "127.0.0.1:" + strconv.Itoa(port), bin: bin, dir: dir, port: port, opts: opts}, nil
}

// Start starts the server on its port and waits until it answers; it must
// not be running.
func (m *Memcached) Start() error {
	m.mu.Lock()
	if m.proc != nil {
		m.mu.Unlock()
		return fmt.Errorf("memcached on %s already running", m.Addr)
	}
	args := []string{"-l", "127.0.0.1", "-p", strconv.Itoa(m.port), "-U", "0",
		"-m", strconv.Itoa(m.opts.MemoryMB), "-c", strconv.Itoa(m.opts.Connections)}
	if m.opts.Threads > 0 {
		args = append(args, "-t", strconv.Itoa(m.opts.Threads))
	}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root") // memcached refuses to run as root otherwise
	}
	p, err := StartProcess(m.dir, nil, m.bin, args...)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	m.proc = p
	m.mu.Unlock()

	deadline := time.Now().Add(WaitLong)
	for {
		select {
		case <-p.Exited():
			m.mu.Lock()
			m.proc = nil
			m.mu.Unlock()
			return fmt.Errorf("memcached exited while starting:\n%s", p.Output())
		default:
		}
		if _, err := m.Command("version"); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("memcached did not answer on %s within %v\n%s", m.Addr, WaitLong, p.Output())
		}
		time.Sleep(10 * time.Millisecond) // polling a port: there is no event to await
	}
}

// Stop kills the server, losing every key. It is safe to call when the
// server is not running.
func (m *Memcached) Stop() error {
	m.mu.Lock()
	p := m.proc
	m.proc = nil
	m.mu.Unlock()
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Kill()
	if err := p.Wait(WaitLong); err != nil {
		return fmt.Errorf("memcached: %w", err)
	}
	return nil
}

// Freeze stops the server's process (SIGSTOP), as a hung server or a
// network that drops every packet would look: connections stay open and
// nothing answers. Thaw lets it go on with every key.
func (m *Memcached) Freeze() error { return m.signal(syscall.SIGSTOP) }

// Thaw lets a frozen server go on (SIGCONT).
func (m *Memcached) Thaw() error { return m.signal(syscall.SIGCONT) }

func (m *Memcached) signal(sig syscall.Signal) error {
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	if p == nil {
		return fmt.Errorf("memcached: not running")
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("memcached: %v: %w", sig, err)
	}
	return nil
}

// Restart kills the server and starts a new one on the same port: every key
// is lost.
func (m *Memcached) Restart() error {
	if err := m.Stop(); err != nil {
		return err
	}
	return m.Start()
}

// Command sends one text-protocol command on a new connection and returns
// the reply lines up to END (or the single reply line of commands without
// one).
func (m *Memcached) Command(cmd string) ([]string, error) {
	c, r, err := m.send(cmd)
	if err != nil {
		return nil, err
	}
	defer c.Close()
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

// send sends cmd on a new connection with a deadline of WaitLong, for
// reading the reply from r.
func (m *Memcached) send(cmd string) (net.Conn, *bufio.Reader, error) {
	c, err := net.DialTimeout("tcp", m.Addr, time.Second)
	if err != nil {
		return nil, nil, fmt.Errorf("memcached %q: %w", cmd, err)
	}
	_ = c.SetDeadline(time.Now().Add(WaitLong))
	if _, err := fmt.Fprintf(c, "%s\r\n", cmd); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("memcached %q: %w", cmd, err)
	}
	return c, bufio.NewReader(c), nil
}

// Incr adds delta to the counter at key directly, as the module's writers
// do, and returns the new value. Its reply is one line that Command cannot
// tell from a value's data line.
func (m *Memcached) Incr(key string, delta uint64) (uint64, error) {
	cmd := fmt.Sprintf("incr %s %d", key, delta)
	c, r, err := m.send(cmd)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("memcached %q: %w", cmd, err)
	}
	n, err := strconv.ParseUint(strings.TrimRight(line, "\r\n"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memcached %q: reply %q", cmd, line)
	}
	return n, nil
}

// Keys lists every key the server holds, sorted, with memcached's
// `lru_crawler metadump all` (a debugging command: tests only).
func (m *Memcached) Keys() ([]string, error) {
	lines, err := m.Command("lru_crawler metadump all")
	if err != nil {
		return nil, fmt.Errorf("listing memcached keys: %w", err)
	}
	var keys []string
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "key=") {
			continue
		}
		k, err := url.QueryUnescape(strings.TrimPrefix(f[0], "key="))
		if err != nil {
			return nil, fmt.Errorf("memcached metadump key %q: %w", f[0], err)
		}
		keys = append(keys, k)
	}
	// The crawler walks the LRUs while items move between them, so it can
	// dump one key twice: each key is listed once.
	sort.Strings(keys)
	return slices.Compact(keys), nil
}

// Set stores a key directly, bypassing the module.
func (m *Memcached) Set(key, value string, ttl int) error {
	lines, err := m.Command(fmt.Sprintf("set %s 0 %d %d\r\n%s", key, ttl, len(value), value))
	if err != nil || len(lines) != 1 || lines[0] != "STORED" {
		return fmt.Errorf("memcached set %s: %v %v", key, lines, err)
	}
	return nil
}

// Get returns a key's value and whether the server holds it.
func (m *Memcached) Get(key string) (string, bool, error) {
	lines, err := m.Command("get " + key)
	if err != nil {
		return "", false, fmt.Errorf("memcached get %s: %w", key, err)
	}
	switch len(lines) {
	case 0:
		return "", false, nil
	case 1: // a VALUE line with no data line: the empty value
		return "", true, nil
	}
	return lines[1], true, nil
}

// Stats returns the server's general statistics (cmd_get, cmd_set, ...).
func (m *Memcached) Stats() (map[string]uint64, error) {
	lines, err := m.Command("stats")
	if err != nil {
		return nil, fmt.Errorf("memcached stats: %w", err)
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
	return out, nil
}
