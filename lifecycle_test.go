package chatroom

// Tests of the lifecycle rows of the README's "Limits and faults": a reload keeps the chat going, a
// stop or SIGTERM closes every client with 1001, and a connection that goes
// silent is closed after two ping intervals.

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// TestReloadKeepsConnections: `caddy reload` with an unchanged chatroom
// config (another directive changed, so that Caddy really reloads) keeps
// every connection open; messages sent in both directions before, during
// and after the reload all arrive, in order; and a client that joins after
// the reload is in the same room.
func TestReloadKeepsConnections(t *testing.T) {
	body := func(tag string) string {
		// Each member can have every message of the other queued: this
		// test is about the reload, not about slow consumers.
		return "\theader X-Config " + tag + "\n" + faultSite("rate_limit 100000 1s", "send_queue 8192")
	}
	p := startCaddy(t, body("one"))
	rc := joinRoom(t, p.url("ws", "/ws"), 2)
	a, b := rc.clients[0], rc.clients[1]

	// Both members send every 2 ms (a busy chat, which the server keeps
	// up with even under the race detector): 100 messages before the
	// reload, then while the main goroutine reloads, then 50 after the
	// reload returned.
	const maxSent = 4000 // 8 s of sending: the reload takes far less
	reloaded := make(chan struct{})
	sent := make([]int, 2)
	after := make([]int, 2)
	errs := make(chan error, 2)
	warm := make(chan struct{}, 2)
	for i, c := range rc.clients {
		go func() {
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for sent[i] < maxSent && after[i] < 50 {
				<-tick.C
				select {
				case <-reloaded:
					after[i]++
				default:
				}
				c.wmu.Lock()
				_ = c.conn.SetWriteDeadline(time.Now().Add(waitLong))
				err := c.conn.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"msg":"r%d"}`, sent[i]))
				c.wmu.Unlock()
				if err != nil {
					errs <- fmt.Errorf("client %d after %d messages: %w", i, sent[i], err)
					return
				}
				sent[i]++
				if sent[i] == 100 {
					warm <- struct{}{}
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		select {
		case <-warm:
		case err := <-errs:
			t.Fatalf("sending before the reload: %v", err)
		}
	}
	p.reload(body("two"))
	close(reloaded)
	awaitHeader(t, p, "X-Config", "two")
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("sending around the reload: %v", err)
		}
	}
	if after[0] < 50 || after[1] < 50 {
		t.Fatalf("the reload outlasted %d messages: %v sent after it", maxSent, after)
	}
	// Each member got every message of the other, in order, and no one
	// left.
	for i, c := range rc.clients {
		from := rc.ids[1-i]
		for n := range sent[1-i] {
			f := c.await("a message from the other member", func(f frame) bool {
				return f.str("from_id") == from || f.str("event") == "leave"
			})
			if f.str("event") == "leave" {
				t.Fatalf("%s saw a leave during the reload: %v", c.name, f)
			}
			if want := fmt.Sprintf("r%d", n); f.str("msg") != want {
				t.Fatalf("%s: message %d from the other is %q, want %q", c.name, n, f.str("msg"), want)
			}
		}
	}
	// A client joining after the reload sees both members online and
	// chats with them.
	late := dial(t, p.url("ws", "/ws"), nil)
	lid, online := late.login()
	if list, _ := online["online"].([]any); len(list) != 3 {
		t.Fatalf("online list after reload %v, want 3 members (the old two and the new one)", online)
	}
	late.send(map[string]any{"msg": "hello after reload"})
	a.await("the late member's message", isChat(lid, "hello after reload"))
	b.await("the late member's message", isChat(lid, "hello after reload"))
	t.Logf("messages sent across the reload: %v", sent)
}

// TestStopClosesWith1001 and TestSIGTERMClosesWith1001: `caddy stop` (the
// admin /stop) and SIGTERM send close 1001 to every client, in every room.
func TestStopClosesWith1001(t *testing.T) {
	testShutdown(t, func(p *caddyProc) { p.stop() })
}

func TestSIGTERMClosesWith1001(t *testing.T) {
	testShutdown(t, func(p *caddyProc) {
		p.signal(syscall.SIGTERM)
		p.wait()
	})
}

func testShutdown(t *testing.T, stop func(*caddyProc)) {
	p := startCaddy(t, faultSite("room {query.room}"))
	one := joinRoom(t, p.url("ws", "/ws?room=one"), 3)
	two := joinRoom(t, p.url("ws", "/ws?room=two"), 2)
	clients := append(one.clients, two.clients...)
	codes := closeCodes(clients)
	stop(p)
	expectGoingAway(t, codes, len(clients))
}

// TestIdleConnectionClosed: a connection that answers no ping and sends
// nothing is closed after two ping intervals; a silent one that answers
// pings stays.
func TestIdleConnectionClosed(t *testing.T) {
	p := startCaddy(t, faultSite("ping_interval 300ms"))
	idleBefore := p.metric(seriesDropped(dropIdle))
	alive := dial(t, p.url("ws", "/ws"), nil) // gorilla answers pings by itself
	aliveID, _ := alive.login()

	idle := dialNoPong(t, p.url("ws", "/ws"))
	idleID, _ := idle.login()
	alive.await("the idle client's join", isEvent("join", idleID))
	if code := idle.awaitClose(); code != websocket.CloseGoingAway {
		t.Errorf("idle client: close code %d, want 1001", code)
	}
	alive.await("the idle client's leave", isEvent("leave", idleID))
	p.awaitMetric(seriesDropped(dropIdle), "one idle drop", func(v float64) bool { return v == idleBefore+1 })

	// More than two intervals have passed for the silent member that
	// answers pings: it is still there.
	other := dial(t, p.url("ws", "/ws"), nil)
	other.login()
	other.send(map[string]any{"msg": "are you there?"})
	alive.await("a message", func(f frame) bool { return f.str("msg") == "are you there?" })
	if p.metric(seriesDropped(dropIdle)) != idleBefore+1 {
		t.Errorf("a member that answers pings was dropped as idle (member %s)", aliveID)
	}
}

// dialNoPong connects a client that reads every frame but never answers a
// ping.
func dialNoPong(t *testing.T, url string) *wsClient {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: waitLong}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	conn, _, err := d.DialContext(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	conn.SetPingHandler(func(string) error { return nil })
	c := &wsClient{t: t, name: "client without pongs", conn: conn, frames: make(chan []byte, 4096), closed: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(func() { _ = conn.Close() })
	return c
}

// TestSIGTERMDeletesOwnMemcachedKeys: with memcached, an instance stopped
// by SIGTERM closes its clients in every room with 1001 and deletes its own
// keys (its presence snapshot and its entry in the index of instances), but
// never another instance's keys, the cluster's shared ones, or keys outside
// its prefix (no flush_all). TestClusterStopInstanceRemovesItsKeys covers
// `caddy stop`.
func TestSIGTERMDeletesOwnMemcachedKeys(t *testing.T) {
	testShutdownWithMemcached(t, func(p *caddyProc) {
		p.signal(syscall.SIGTERM)
		p.wait()
	})
}

func testShutdownWithMemcached(t *testing.T, stop func(*caddyProc)) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	m := testenv.StartMemcached(t)
	m.Set("other:unrelated", "must stay", 0)

	// The instance that stays runs first, so that its node key is known.
	stays := startCaddyCluster(t, "", m.Addr)
	stayer := dial(t, stays.url("ws", "/ws?room=shared"), nil)
	stayer.login()
	stayerNodes := awaitNodeKeys(t, m, 1)

	goes := startCaddyCluster(t, "", m.Addr)
	rc := joinRoom(t, goes.url("ws", "/ws?room=shared"), 2)
	other := joinRoom(t, goes.url("ws", "/ws?room=other"), 1)
	nodes := awaitNodeKeys(t, m, 2)
	var goingNode string
	for _, k := range nodes {
		if k != stayerNodes[0] {
			goingNode = k
		}
	}
	goingID := strings.TrimPrefix(goingNode, DefaultPrefix+"node:")
	if !strings.Contains(nodeIndex(m), goingID) {
		t.Fatalf("the index of instances %q lacks the new instance %s", nodeIndex(m), goingID)
	}
	before := m.Keys()

	clients := append(rc.clients, other.clients...)
	codes := closeCodes(clients)
	stop(goes)
	expectGoingAway(t, codes, len(clients))

	after := m.Keys()
	have := make(map[string]bool, len(after))
	for _, k := range after {
		have[k] = true
	}
	for _, k := range after {
		if k == goingNode || strings.HasPrefix(k, goingNode+":") {
			t.Errorf("the stopped instance's key %s is still there", k)
		}
	}
	if idx := nodeIndex(m); strings.Contains(idx, goingID) {
		t.Errorf("the index of instances %q still lists the stopped instance %s", idx, goingID)
	}
	for _, k := range before {
		if k != goingNode && !strings.HasPrefix(k, goingNode+":") && !have[k] && !strings.Contains(k, ":log:") {
			// Relay log entries expire by themselves; every other key
			// belongs to the cluster or to someone else.
			t.Errorf("key %s of another instance or of the cluster was deleted", k)
		}
	}
	if !have["other:unrelated"] || !have[stayerNodes[0]] {
		t.Errorf("keys after the stop %q: want other:unrelated and %s kept", after, stayerNodes[0])
	}

	// The instance that stays goes on serving.
	late := dial(t, stays.url("ws", "/ws?room=shared"), nil)
	lid, _ := late.login()
	stayer.await("a join after the other instance stopped", isEvent("join", lid))
}

// closeCodes reports each client's close code on a channel as its
// connection ends (-1 when it ended without a close frame).
func closeCodes(clients []*wsClient) <-chan int {
	codes := make(chan int, len(clients))
	for _, c := range clients {
		go func() {
			<-c.closed
			code := -1
			if ce, ok := c.err.(*websocket.CloseError); ok {
				code = ce.Code
			}
			codes <- code
		}()
	}
	return codes
}

// awaitNodeKeys polls memcached until it holds n presence snapshots of
// instances, and returns their keys. An instance writes its snapshot in the
// background once it has a member: there is no event to await.
func awaitNodeKeys(t *testing.T, m *testenv.TestMemcached, n int) []string {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		nodes := nodeKeys(m.Keys(), DefaultPrefix)
		if len(nodes) == n {
			return nodes
		}
		if time.Now().After(deadline) {
			t.Fatalf("memcached holds node keys %q, want %d within %v", nodes, n, waitLong)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nodeIndex returns the value of the index of instances, "" when missing.
func nodeIndex(m *testenv.TestMemcached) string {
	return m.Get(DefaultPrefix + "nodes")
}

// expectGoingAway waits for n close codes and checks each is 1001.
func expectGoingAway(t *testing.T, codes <-chan int, n int) {
	t.Helper()
	for range n {
		select {
		case code := <-codes:
			if code != websocket.CloseGoingAway {
				t.Errorf("a client got close code %d, want 1001", code)
			}
		case <-time.After(waitLong):
			t.Fatalf("a client was not closed within %v of the stop", waitLong)
		}
	}
}
