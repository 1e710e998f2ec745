package main

// The processes under soak: a memcached that can be restarted on its port,
// and a Caddy with the chatroom module whose admin API gives its metrics.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// startupWait bounds the start of a process.
const startupWait = 30 * time.Second

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// awaitPort waits until addr accepts TCP connections.
func awaitPort(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(startupWait)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("process exited before listening on %s", addr)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond) // polling a port: no event to await
	}
	return fmt.Errorf("nothing listens on %s after %v", addr, startupWait)
}

// process is a child process and a channel closed when it exits.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	out    *syncBuffer
}

func startProcess(dir, name string, args ...string) (*process, error) {
	p := &process{cmd: exec.Command(name, args...), exited: make(chan struct{}), out: &syncBuffer{}}
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// kill ends the process at once and waits for it.
func (p *process) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// syncBuffer collects a process's output safely for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// memcached is a memcached server on a fixed loopback port.
type memcached struct {
	bin  string
	dir  string
	Addr string
	proc *process
}

func startMemcached(dir string) (*memcached, error) {
	bin, err := exec.LookPath("memcached")
	if err != nil {
		return nil, fmt.Errorf("memcached is needed for the soak: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	m := &memcached{bin: bin, dir: dir, Addr: "127.0.0.1:" + strconv.Itoa(port)}
	return m, m.start()
}

func (m *memcached) start() error {
	_, port, _ := net.SplitHostPort(m.Addr)
	args := []string{"-l", "127.0.0.1", "-p", port, "-U", "0", "-m", "64", "-c", "1024"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root") // memcached refuses to run as root otherwise
	}
	p, err := startProcess(m.dir, m.bin, args...)
	if err != nil {
		return err
	}
	m.proc = p
	if err := awaitPort(m.Addr, p.exited); err != nil {
		return fmt.Errorf("memcached: %w\n%s", err, p.out)
	}
	return nil
}

// restart kills the server and starts a new one on the same port: every
// key is lost.
func (m *memcached) restart() error {
	m.proc.kill()
	return m.start()
}

// caddy is a Caddy process with the chatroom module.
type caddy struct {
	bin   string
	dir   string
	Port  int
	Admin string
	proc  *process
	http  *http.Client
}

// siteConfig is the whole Caddyfile; tag changes a response header only,
// so that a reload with another tag leaves the chatroom config unchanged.
func (c *caddy) siteConfig(memcachedAddr, tag string) string {
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	grace_period 2s
}

http://127.0.0.1:%d {
	header X-Soak %s
	chatroom /ws {
		memcached %s
		room {query.room}
		rate_limit 100 1s
		ping_interval 5s
	}
	respond "soak"
}
`, c.Admin, c.Port, tag, memcachedAddr)
}

func startCaddy(bin, dir, memcachedAddr string) (*caddy, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	c := &caddy{bin: bin, dir: dir, Port: port, Admin: "127.0.0.1:" + strconv.Itoa(admin),
		// No keep-alive: the soak's own admin requests leave no
		// connection (and no goroutine) behind in the server.
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(c.siteConfig(memcachedAddr, "0")), 0o644); err != nil {
		return nil, err
	}
	c.proc, err = startProcess(dir, bin, "run", "--config", cfg, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	if err := awaitPort(fmt.Sprintf("127.0.0.1:%d", port), c.proc.exited); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, c.proc.out)
	}
	return c, nil
}

// reload loads the config with another tag through the admin API, as
// `caddy reload` does.
func (c *caddy) reload(memcachedAddr, tag string) error {
	req, err := http.NewRequest(http.MethodPost, "http://"+c.Admin+"/load", strings.NewReader(c.siteConfig(memcachedAddr, tag)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("reload: %s: %s", resp.Status, body)
	}
	return nil
}

// stop stops Caddy through the admin API and waits for it to exit.
func (c *caddy) stop() error {
	resp, err := c.http.Post("http://"+c.Admin+"/stop", "", nil)
	if err == nil {
		resp.Body.Close()
	}
	select {
	case <-c.proc.exited:
		return err
	case <-time.After(startupWait):
		c.proc.kill()
		return fmt.Errorf("caddy did not stop within %v", startupWait)
	}
}

// collectGarbage runs a garbage collection in Caddy: the heap profile
// endpoint does one first when asked with gc=1.
func (c *caddy) collectGarbage() error {
	resp, err := c.http.Get("http://" + c.Admin + "/debug/pprof/heap?gc=1")
	if err != nil {
		return fmt.Errorf("forcing a GC: %w", err)
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// metrics reads the admin /metrics and returns every sample by series.
func (c *caddy) metrics() (map[string]float64, error) {
	resp, err := c.http.Get("http://" + c.Admin + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("reading /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading /metrics: %s", resp.Status)
	}
	samples := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			samples[line[:i]] = v
		}
	}
	return samples, sc.Err()
}
