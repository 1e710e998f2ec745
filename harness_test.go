package chatroom

// The integration harness: a real Caddy binary built from cmd/caddy (with
// the race detector when the tests run with it), started as a process on free
// loopback ports, and real WebSocket clients talking to it.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// waitLong bounds every wait on the server in the integration tests: long
// enough for a loaded 2-core machine running the race detector, short enough
// that a hung test fails with a message rather than the go test timeout.
const waitLong = 15 * time.Second

var buildCaddy struct {
	once sync.Once
	path string
	err  error
}

// caddyBinary builds cmd/caddy once per test process and returns its path.
func caddyBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	buildCaddy.once.Do(func() {
		dir, err := os.MkdirTemp("", "chatroom-caddy-")
		if err != nil {
			buildCaddy.err = err
			return
		}
		buildCaddy.path = filepath.Join(dir, "caddy")
		args := []string{"build", "-o", buildCaddy.path}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/caddy")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildCaddy.err = fmt.Errorf("go build ./cmd/caddy: %w\n%s", err, out)
		}
	})
	if buildCaddy.err != nil {
		t.Fatal(buildCaddy.err)
	}
	return buildCaddy.path
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// caddyProc is one Caddy process under test.
type caddyProc struct {
	t     testing.TB
	bin   string
	dir   string
	Port  int // the site's HTTP port
	Admin string
	cmd   *exec.Cmd
	out   *syncBuffer
	done  chan struct{}
	err   error // the process's exit, once done is closed
}

// syncBuffer collects a process's output safely for concurrent reads.
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

// siteConfig makes a whole Caddyfile around the body of one site block, on
// the given ports. The body may use {{root}} for a directory of static
// files the test owns.
func (p *caddyProc) siteConfig(body string) string {
	body = strings.ReplaceAll(body, "{{root}}", p.dir)
	return fmt.Sprintf("{\n\tadmin %s\n\tdebug\n\tpersist_config off\n\tgrace_period 2s\n}\n\nhttp://127.0.0.1:%d {\n\tbind 127.0.0.1\n%s\n}\n", p.Admin, p.Port, body)
}

// startCaddy starts a Caddy process whose one site has the given body. It
// waits until the site answers, and stops the process when the test ends.
func startCaddy(t testing.TB, body string) *caddyProc {
	t.Helper()
	p := &caddyProc{t: t, bin: caddyBinary(t), dir: t.TempDir(), Port: freePort(t)}
	p.Admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if err := os.WriteFile(filepath.Join(p.dir, "index.html"), []byte("<p>static page</p>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.start(body)
	t.Cleanup(p.kill)
	return p
}

func (p *caddyProc) start(body string) {
	p.t.Helper()
	cfg := filepath.Join(p.dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(p.siteConfig(body)), 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.out = &syncBuffer{}
	p.cmd = exec.Command(p.bin, "run", "--config", cfg, "--adapter", "caddyfile")
	p.cmd.Dir = p.dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), "HOME="+p.dir, "XDG_DATA_HOME="+p.dir, "XDG_CONFIG_HOME="+p.dir, "GORACE=halt_on_error=0 exitcode=66")
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("starting caddy: %v", err)
	}
	p.done = make(chan struct{})
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	p.waitReady()
}

// waitReady waits until the admin API has the config and the site port
// accepts connections.
func (p *caddyProc) waitReady() {
	p.t.Helper()
	deadline := time.Now().Add(waitLong)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			p.t.Fatalf("caddy exited while starting: %v\n%s", p.err, p.out)
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.Port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond) // polling a port: there is no event to await
	}
	p.t.Fatalf("caddy did not listen on port %d within %v\n%s", p.Port, waitLong, p.out)
}

// reload loads a new site body through the admin API, as `caddy reload`
// does.
func (p *caddyProc) reload(body string) {
	p.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.Admin+"/load", strings.NewReader(p.siteConfig(body)))
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatalf("reload: %v", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		p.t.Fatalf("reload: %s: %s", resp.Status, msg)
	}
}

// stop asks Caddy to stop through the admin API, as `caddy stop` does, and
// waits for the process to exit.
func (p *caddyProc) stop() {
	p.t.Helper()
	resp, err := http.Post("http://"+p.Admin+"/stop", "", nil)
	if err != nil {
		p.t.Fatalf("caddy stop: %v", err)
	}
	resp.Body.Close()
	p.wait()
}

// signal sends sig to the process.
func (p *caddyProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait waits for the process to exit and fails the test if it reported a
// data race.
func (p *caddyProc) wait() {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitLong):
		p.t.Fatalf("caddy did not exit within %v\n%s", waitLong, p.out)
	}
	p.checkRace()
}

func (p *caddyProc) checkRace() {
	if strings.Contains(p.out.String(), "WARNING: DATA RACE") {
		p.t.Errorf("the caddy process reported a data race:\n%s", p.out)
	}
}

// kill ends the process if it still runs (SIGKILL) and checks its output
// for data races.
func (p *caddyProc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.checkRace()
	if p.t.Failed() {
		p.t.Logf("caddy output:\n%s", p.out)
	}
}

// url returns the URL of path on the site, with scheme "http" or "ws".
func (p *caddyProc) url(scheme, path string) string {
	return fmt.Sprintf("%s://127.0.0.1:%d%s", scheme, p.Port, path)
}

// wsClient is a real WebSocket client whose frames arrive on a channel, so
// that every wait is bounded.
type wsClient struct {
	t      testing.TB
	name   string
	conn   *websocket.Conn
	frames chan []byte
	closed chan struct{}
	err    error // why reading stopped, once closed is closed
	wmu    sync.Mutex
}

// frame is a decoded server frame.
type frame map[string]any

func (f frame) str(key string) string {
	s, _ := f[key].(string)
	return s
}

// dial opens a WebSocket connection and fails the test if it is refused.
func dial(t testing.TB, url string, header http.Header) *wsClient {
	t.Helper()
	c, resp, err := tryDial(t, url, header)
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Fatalf("dial %s: %v %s", url, err, status)
	}
	return c
}

// tryDial opens a WebSocket connection and returns the HTTP response when
// the upgrade is refused.
func tryDial(t testing.TB, url string, header http.Header) (*wsClient, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: waitLong}
	conn, resp, err := d.Dial(url, header)
	if err != nil {
		return nil, resp, err
	}
	c := &wsClient{t: t, name: url, conn: conn, frames: make(chan []byte, 4096), closed: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(func() { _ = c.conn.Close() })
	return c, resp, nil
}

func (c *wsClient) readLoop() {
	defer close(c.closed)
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			c.err = err
			return
		}
		c.frames <- data
	}
}

// send writes v as one JSON text frame.
func (c *wsClient) send(v any) {
	c.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(websocket.TextMessage, data)
}

// sendRaw writes one frame of the given type.
func (c *wsClient) sendRaw(kind int, data []byte) {
	c.t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(waitLong))
	if err := c.conn.WriteMessage(kind, data); err != nil {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
}

// next returns the next frame, failing the test after waitLong.
func (c *wsClient) next() frame {
	c.t.Helper()
	select {
	case data := <-c.frames:
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			c.t.Fatalf("%s: frame is not a JSON object: %q", c.name, data)
		}
		return f
	case <-c.closed:
		c.t.Fatalf("%s: connection closed while waiting for a frame: %v", c.name, c.err)
	case <-time.After(waitLong):
		c.t.Fatalf("%s: no frame within %v", c.name, waitLong)
	}
	return nil
}

// await returns the first frame that match accepts, skipping others.
func (c *wsClient) await(what string, match func(frame) bool) frame {
	c.t.Helper()
	deadline := time.After(waitLong)
	for {
		select {
		case data := <-c.frames:
			var f frame
			if json.Unmarshal(data, &f) == nil && match(f) {
				return f
			}
		case <-c.closed:
			c.t.Fatalf("%s: connection closed while waiting for %s: %v", c.name, what, c.err)
		case <-deadline:
			c.t.Fatalf("%s: no %s within %v", c.name, what, waitLong)
		}
	}
}

// login reads the welcome and online frames and returns the client's id.
func (c *wsClient) login() (id string, online frame) {
	c.t.Helper()
	welcome := c.next()
	if welcome.str("msg_source") != "server" || welcome.str("id") == "" {
		c.t.Fatalf("%s: first frame is not a welcome: %v", c.name, welcome)
	}
	online = c.next()
	if online.str("event") != "online" {
		c.t.Fatalf("%s: second frame is not the online list: %v", c.name, online)
	}
	return welcome.str("id"), online
}

// awaitClose waits for the server to close the connection and returns the
// close code (or -1 when it closed without a close frame).
func (c *wsClient) awaitClose() int {
	c.t.Helper()
	deadline := time.After(waitLong)
	for {
		select {
		case <-c.frames:
		case <-c.closed:
			if ce, ok := c.err.(*websocket.CloseError); ok {
				return ce.Code
			}
			return -1
		case <-deadline:
			c.t.Fatalf("%s: connection not closed within %v", c.name, waitLong)
		}
	}
}

// restart stops Caddy as `caddy stop` does and starts it again with the
// given site body on the same ports, as an operator restarting the server
// would: clients see the server go away and come back at the same address.
func (p *caddyProc) restart(body string) {
	p.t.Helper()
	p.stop()
	p.start(body)
}
