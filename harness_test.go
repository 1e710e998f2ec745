package chatroom

// The integration harness: a real Caddy binary built from cmd/caddy (with
// the race detector when the tests run with it), started as a process on free
// loopback ports by internal/testenv, and real WebSocket clients talking to
// it. The helpers here keep the tests' short names over testenv.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// waitLong bounds every wait on the server in the integration tests: long
// enough for a loaded 2-core machine running the race detector, short enough
// that a hung test fails with a message rather than the go test timeout.
const waitLong = testenv.WaitLong

// caddyBinary builds cmd/caddy once per test process and returns its path.
func caddyBinary(t testing.TB) string {
	t.Helper()
	return testenv.CaddyBinary(t)
}

// freePort returns a loopback TCP port that was free a moment ago.
//
//lint:ignore U1000 the tests' short name for testenv.FreePort, kept for tests that need a spare port
func freePort(t testing.TB) int {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// syncBuffer collects a process's output safely for concurrent reads.
type syncBuffer = testenv.SyncBuffer

// caddyProc is one Caddy process under test: testenv.Caddy failing the test
// on an error, and on a data race the process reports.
type caddyProc struct {
	t     testing.TB
	c     *testenv.Caddy
	dir   string
	Port  int // the site's HTTP port
	Admin string
	out   *syncBuffer // the current process's output
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
	dir := t.TempDir()
	c, err := testenv.NewCaddy(caddyBinary(t), dir)
	if err != nil {
		t.Fatal(err)
	}
	p := &caddyProc{t: t, c: c, dir: dir, Port: c.Port, Admin: c.Admin}
	if err := os.WriteFile(filepath.Join(p.dir, "index.html"), []byte("<p>static page</p>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.start(body)
	t.Cleanup(p.kill)
	return p
}

func (p *caddyProc) start(body string) {
	p.t.Helper()
	err := p.c.Start(p.siteConfig(body))
	if proc := p.c.Process(); proc != nil {
		p.out = proc.Log()
	}
	if err != nil {
		p.t.Fatal(err)
	}
}

// reload loads a new site body through the admin API, as `caddy reload`
// does.
func (p *caddyProc) reload(body string) {
	p.t.Helper()
	if err := p.c.Reload(p.siteConfig(body)); err != nil {
		p.t.Fatal(err)
	}
}

// stop asks Caddy to stop through the admin API, as `caddy stop` does, and
// waits for the process to exit.
func (p *caddyProc) stop() {
	p.t.Helper()
	if err := p.c.Stop(); err != nil {
		p.t.Fatalf("%v\n%s", err, p.out)
	}
	p.checkRace()
}

// signal sends sig to the process.
func (p *caddyProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.c.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// wait waits for the process to exit and fails the test if it reported a
// data race.
func (p *caddyProc) wait() {
	p.t.Helper()
	if err := p.c.Wait(waitLong); err != nil {
		p.t.Fatalf("%v\n%s", err, p.out)
	}
	p.checkRace()
}

func (p *caddyProc) checkRace() {
	if p.c.Raced() {
		p.t.Errorf("the caddy process reported a data race:\n%s", p.out)
	}
}

// kill ends the process if it still runs (SIGKILL) and checks its output
// for data races.
func (p *caddyProc) kill() {
	p.c.Kill()
	p.checkRace()
	if p.t.Failed() && p.out != nil {
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

// connect dials url and reads the welcome and online frames: a member in
// the room, with its id.
func connect(t testing.TB, url string) (*wsClient, string) {
	t.Helper()
	c := dial(t, url, nil)
	id, _ := c.login()
	return c, id
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
