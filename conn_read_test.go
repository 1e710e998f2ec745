package chatroom

// Tests of the read side's parking (conn_read.go, internal/wsio): idle
// connections hold no goroutine, and a parked connection wakes for
// whatever the client sends.

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// serverGoroutines reads the Caddy process's goroutine count from its
// admin endpoint's pprof.
func serverGoroutines(t *testing.T, p *caddyProc) int {
	t.Helper()
	n, err := p.c.Goroutines()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestIdleConnectionsHoldNoGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("parking idle connections needs epoll")
	}
	p := startCaddy(t, faultSite())
	first := dial(t, p.url("ws", "/ws"), nil)
	first.login()
	base := serverGoroutines(t, p)

	const n = 40
	for range n {
		c := dial(t, p.url("ws", "/ws"), nil)
		c.login()
	}
	// Writers exit once the join frames are out, readers once the
	// clients are quiet: wait for that, bounded.
	deadline := time.Now().Add(waitLong)
	got := serverGoroutines(t, p)
	for got >= base+n/4 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		got = serverGoroutines(t, p)
	}
	if got >= base+n/4 {
		t.Fatalf("%d idle connections hold %d goroutines (before: %d); want almost none each", n, got-base, base)
	}
}

func TestParkedConnectionWakes(t *testing.T) {
	p := startCaddy(t, faultSite())
	other := dial(t, p.url("ws", "/ws"), nil)
	otherID, _ := other.login()

	// A client of our own, to see pongs and write raw bytes.
	ws, _, err := (&websocket.Dialer{HandshakeTimeout: waitLong}).Dial(p.url("ws", "/ws"), nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	pongs := make(chan string, 8)
	ws.SetPongHandler(func(s string) error { pongs <- s; return nil })
	frames := make(chan []byte, 64)
	go func() {
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				close(frames)
				return
			}
			frames <- data
		}
	}()
	next := func(what string, match func(string) bool) {
		t.Helper()
		timeout := time.After(waitLong)
		for {
			select {
			case f, ok := <-frames:
				if !ok {
					t.Fatalf("connection closed while waiting for %s", what)
				}
				if match(string(f)) {
					return
				}
			case <-timeout:
				t.Fatalf("no %s within %s", what, waitLong)
			}
		}
	}
	next("the online list", func(f string) bool { return strings.Contains(f, `"event":"online"`) })
	other.await("the join", func(f frame) bool { return f.str("event") == "join" })

	// Pings, each to a connection that has parked in between (or not yet:
	// either way it must answer).
	for i := range 3 {
		want := fmt.Sprintf("ping %d", i)
		if err := ws.WriteControl(websocket.PingMessage, []byte(want), time.Now().Add(waitLong)); err != nil {
			t.Fatalf("ping: %v", err)
		}
		select {
		case got := <-pongs:
			if got != want {
				t.Fatalf("pong %q, want %q", got, want)
			}
		case <-time.After(waitLong):
			t.Fatalf("no pong for %q within %s", want, waitLong)
		}
	}

	// A chat frame that arrives in two pieces, the second after a pause:
	// the woken reader waits for the rest.
	payload := []byte(`{"msg":"in two pieces"}`)
	raw := append([]byte{0x81, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...) // zero mask
	if _, err := ws.NetConn().Write(raw[:4]); err != nil {
		t.Fatalf("writing: %v", err)
	}
	time.Sleep(100 * time.Millisecond) // the pause under test, not a synchronisation
	if _, err := ws.NetConn().Write(raw[4:]); err != nil {
		t.Fatalf("writing: %v", err)
	}
	other.await("the chat sent in two pieces", func(f frame) bool { return f.str("msg") == "in two pieces" })

	// And the parked connection still receives.
	other.send(map[string]string{"msg": "to the parked one"})
	next("the chat from the other member", func(f string) bool {
		return strings.Contains(f, `"from_id":"`+otherID+`"`) && strings.Contains(f, "to the parked one")
	})
}
