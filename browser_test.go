package chatroom

// The example page in a real browser: e2e/chat.test.mjs drives Debian's
// Chromium through playwright-core against the example page served by a
// real Caddy built with this module.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// browserTestTimeout bounds the whole browser run, restarts included.
const browserTestTimeout = 6 * time.Minute

// defaultChromium is where Debian's chromium package installs the browser.
const defaultChromium = "/usr/bin/chromium"

// browserPrerequisites returns the node binary, or why the browser tests
// cannot run here.
func browserPrerequisites() (node string, missing string) {
	node, err := exec.LookPath("node")
	if err != nil {
		return "", "node is not installed"
	}
	if _, err := os.Stat(filepath.Join("e2e", "node_modules", "playwright-core", "package.json")); err != nil {
		return "", "e2e/node_modules/playwright-core is missing (run `cd e2e && npm ci`)"
	}
	chromium := os.Getenv("CHATROOM_CHROMIUM")
	if chromium == "" {
		chromium = defaultChromium
	}
	if _, err := os.Stat(chromium); err != nil {
		return "", chromium + " is missing (apt-get install chromium, or set CHATROOM_CHROMIUM)"
	}
	return node, ""
}

// TestBrowser runs the page's end-to-end tests: two people chatting both
// ways, names, presence, HTML and script payloads shown as text, and a
// reconnect after the server restarts, all with `compression` on, which
// Chromium negotiates. With CHATROOM_UPDATE_SCREENSHOT=1 it
// also writes docs/screenshot.png and docs/screenshot-phone.png.
func TestBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test: skipped with -short")
	}
	node, missing := browserPrerequisites()
	if missing != "" {
		if os.Getenv("CHATROOM_REQUIRE_BROWSER") == "1" {
			t.Fatalf("CHATROOM_REQUIRE_BROWSER=1 but %s", missing)
		}
		t.Skipf("browser test skipped: %s (CHATROOM_REQUIRE_BROWSER=1 makes this a failure)", missing)
	}
	public, err := filepath.Abs(filepath.Join("example", "public"))
	if err != nil {
		t.Fatal(err)
	}
	// The example's own site, on a free port.
	// `user` from a cookie lets the script open a page with an
	// authenticated name (a test stand-in for basic_auth or forward_auth:
	// a cookie is not authentication); pages without it choose nicks.
	// compression: browsers offer permessage-deflate, so the whole run
	// goes through it (the run without is every other test's).
	body := fmt.Sprintf("\troot * %q\n\tchatroom /ws {\n\t\troom {query.room}\n\t\thistory 50\n\t\tuser {http.request.cookie.chatuser}\n\t\tpresence_limit 3\n\t\tcompression\n\t}\n\tfile_server", public)
	p := startCaddy(t, body)

	// The script asks for restarts over HTTP; the restart itself runs here,
	// on the test's goroutine, where the harness may fail the test.
	restarts := make(chan chan struct{})
	control := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/restart" {
			http.NotFound(w, r)
			return
		}
		done := make(chan struct{})
		select {
		case restarts <- done:
		case <-r.Context().Done():
			return
		}
		select {
		case <-done:
			fmt.Fprintln(w, "restarted")
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(control.Close)

	env := append(os.Environ(),
		"CHATROOM_URL="+p.url("http", ""),
		"CHATROOM_CONTROL_URL="+control.URL,
		"CHATROOM_COMPRESSION=1",
		"XDG_CONFIG_HOME="+t.TempDir(),
		"XDG_CACHE_HOME="+t.TempDir(),
	)
	if os.Getenv("CHATROOM_UPDATE_SCREENSHOT") == "1" {
		docs, err := filepath.Abs("docs")
		if err != nil {
			t.Fatal(err)
		}
		env = append(env, "CHATROOM_SCREENSHOT_DIR="+docs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), browserTestTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", "chat.test.mjs")
	cmd.Dir = "e2e"
	cmd.Env = env
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// node --test runs the file in a child process that starts Chromium:
	// put them all in one process group and end the group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting node: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
	})

	start := time.Now()
	for {
		select {
		case done := <-restarts:
			p.restart(body)
			close(done)
			continue
		case err = <-exited:
			exited <- err // for the cleanup
		}
		break
	}
	t.Logf("node --test chat.test.mjs took %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	if ctx.Err() != nil {
		t.Fatalf("the browser tests did not finish within %v", browserTestTimeout)
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		t.Fatalf("the browser tests failed (%v); node's output is above", err)
	}
	if err != nil {
		t.Fatalf("running node: %v", err)
	}
}
