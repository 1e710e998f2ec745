package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// caddyPackage is built by import path, so that a build works from any
// directory of the module (the tests of every package run in their own).
const caddyPackage = "github.com/caddy-chatroom/chatroom/cmd/caddy"

// BuildCaddy builds cmd/caddy into out, with the race detector when race is
// set. It must run inside the module.
func BuildCaddy(out string, race bool) error {
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	if msg, err := exec.Command("go", append(args, caddyPackage)...).CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s (run inside the module): %w\n%s", caddyPackage, err, msg)
	}
	return nil
}

// built is the Caddy binary of this test process: building it takes
// seconds, and every integration test of a package needs the same one.
var built struct {
	once sync.Once
	path string
	err  error
}

// CaddyBinary builds cmd/caddy once per test process, with the race
// detector when the tests run with it, and returns its path. It skips the
// test under -short: every test that needs Caddy is an integration test.
func CaddyBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "chatroom-caddy-")
		if err != nil {
			built.err = fmt.Errorf("building caddy: %w", err)
			return
		}
		built.path = filepath.Join(dir, "caddy")
		built.err = BuildCaddy(built.path, RaceEnabled)
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// Caddy is one Caddy process with the chatroom module, on a site port and
// an admin port of its own that stay the same across restarts.
type Caddy struct {
	// Bin is the Caddy binary.
	Bin string
	// Dir holds the Caddyfile and is the process's home and working
	// directory.
	Dir string
	// Port is the site's HTTP port on 127.0.0.1.
	Port int
	// Admin is the admin API's address, host:port.
	Admin string

	proc *Process
	http *http.Client
}

// NewCaddy picks free ports for a Caddy process; Start starts it.
func NewCaddy(bin, dir string) (*Caddy, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	admin, err := FreePort()
	if err != nil {
		return nil, err
	}
	return &Caddy{Bin: bin, Dir: dir, Port: port, Admin: "127.0.0.1:" + strconv.Itoa(admin),
		// No keep-alive: the admin requests of a test or a soak leave no
		// connection (and no goroutine) behind in the server.
		http: &http.Client{Timeout: WaitLong, Transport: &http.Transport{DisableKeepAlives: true}}}, nil
}

// Start writes caddyfile to Dir and runs Caddy with it, waiting until the
// site port accepts connections. A race detector report does not stop the
// process (GORACE halt_on_error=0) so that Raced can show it.
func (c *Caddy) Start(caddyfile string) error {
	cfg := filepath.Join(c.Dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(caddyfile), 0o644); err != nil {
		return fmt.Errorf("writing the Caddyfile: %w", err)
	}
	p, err := StartProcess(c.Dir, []string{"GORACE=halt_on_error=0 exitcode=66"}, c.Bin, "run", "--config", cfg, "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	c.proc = p
	if err := AwaitPort(fmt.Sprintf("127.0.0.1:%d", c.Port), p.Exited()); err != nil {
		select {
		case <-p.Exited():
			return fmt.Errorf("caddy exited while starting: %v\n%s", p.Err(), p.Output())
		default:
		}
		return fmt.Errorf("caddy: %w\n%s", err, p.Output())
	}
	return nil
}

// Process is the running (or last) Caddy process.
func (c *Caddy) Process() *Process { return c.proc }

// Output is what the current process wrote so far.
func (c *Caddy) Output() string { return c.proc.Output() }

// Raced reports whether the process reported a data race.
func (c *Caddy) Raced() bool {
	return c.proc != nil && strings.Contains(c.proc.Output(), "WARNING: DATA RACE")
}

// URL returns the URL of path on the site, with scheme "http" or "ws".
func (c *Caddy) URL(scheme, path string) string {
	return fmt.Sprintf("%s://127.0.0.1:%d%s", scheme, c.Port, path)
}

// Reload loads caddyfile through the admin API, as `caddy reload` does.
func (c *Caddy) Reload(caddyfile string) error {
	req, err := http.NewRequest(http.MethodPost, "http://"+c.Admin+"/load", strings.NewReader(caddyfile))
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return fmt.Errorf("reload: %s: %s", resp.Status, msg)
	}
	return nil
}

// Stop asks Caddy to stop through the admin API, as `caddy stop` does, and
// waits up to WaitLong for the process to exit (then kills it).
func (c *Caddy) Stop() error {
	resp, err := c.http.Post("http://"+c.Admin+"/stop", "", nil)
	if err != nil {
		return fmt.Errorf("caddy stop: %w", err)
	}
	resp.Body.Close()
	if err := c.proc.Wait(WaitLong); err != nil {
		c.proc.Kill()
		return fmt.Errorf("caddy stop: %w", err)
	}
	return nil
}

// Signal sends sig to the process.
func (c *Caddy) Signal(sig syscall.Signal) error { return c.proc.Signal(sig) }

// Kill ends the process at once if it still runs.
func (c *Caddy) Kill() {
	if c.proc != nil {
		c.proc.Kill()
	}
}

// CollectGarbage runs a garbage collection in Caddy: the heap profile
// endpoint does one first when asked with gc=1.
func (c *Caddy) CollectGarbage() error {
	resp, err := c.http.Get("http://" + c.Admin + "/debug/pprof/heap?gc=1")
	if err != nil {
		return fmt.Errorf("forcing a GC: %w", err)
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// HeapInuse runs a garbage collection in Caddy and returns its heap in
// use, in bytes: runtime.GC then runtime.ReadMemStats, read from the heap
// profile's text form, whose serving allocates little (the /metrics
// endpoint's gzip writers alone move the figure by most of a MiB). Two
// collections run, the second after sync.Pool's victim cache of the first
// is dropped.
func (c *Caddy) HeapInuse() (uint64, error) {
	var n uint64
	for range 2 {
		resp, err := c.http.Get("http://" + c.Admin + "/debug/pprof/heap?gc=1&debug=1")
		if err != nil {
			return 0, fmt.Errorf("reading the heap profile: %w", err)
		}
		n, err = scanHeapInuse(resp.Body)
		resp.Body.Close()
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}

// scanHeapInuse finds the "# HeapInuse = N" line of a heap profile's text
// form.
func scanHeapInuse(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var n uint64
		if _, err := fmt.Sscanf(sc.Text(), "# HeapInuse = %d", &n); err == nil {
			return n, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading the heap profile: %w", err)
	}
	return 0, fmt.Errorf("the heap profile has no HeapInuse line")
}

// Goroutines reads the process's goroutine count from the admin pprof
// endpoint.
func (c *Caddy) Goroutines() (int, error) {
	resp, err := c.http.Get("http://" + c.Admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, fmt.Errorf("reading the goroutine profile: %w", err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(io.LimitReader(resp.Body, 4<<10)).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("reading the goroutine profile: %w", err)
	}
	var n int
	if _, err := fmt.Sscanf(line, "goroutine profile: total %d", &n); err != nil {
		return 0, fmt.Errorf("goroutine profile starts %q: %w", line, err)
	}
	return n, nil
}

// Metrics reads the admin /metrics and returns every sample by its series
// text (name plus labels, as printed).
func (c *Caddy) Metrics() (map[string]float64, error) {
	resp, err := c.http.Get("http://" + c.Admin + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("reading /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("reading /metrics: %s: %s", resp.Status, body)
	}
	samples, err := ParseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading /metrics: %w", err)
	}
	return samples, nil
}

// Wait waits up to d for the process to exit.
func (c *Caddy) Wait(d time.Duration) error { return c.proc.Wait(d) }
