package chatroom

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// Series names of the module's metrics, as the admin /metrics endpoint
// shows them.
const (
	seriesOpen      = "caddy_chatroom_connections_open"
	seriesReceived  = "caddy_chatroom_messages_received_total"
	seriesLimited   = "caddy_chatroom_messages_rate_limited_total"
	seriesDelivered = "caddy_chatroom_frames_delivered_total"
	seriesMcErrors  = "caddy_chatroom_memcached_errors_total"
)

// seriesDropped names the dropped-clients counter of one reason.
func seriesDropped(reason string) string {
	return fmt.Sprintf("caddy_chatroom_clients_dropped_total{reason=%q}", reason)
}

// metrics reads the admin /metrics endpoint and returns every sample by its
// series text (name plus labels, as printed).
func (p *caddyProc) metrics() map[string]float64 {
	p.t.Helper()
	samples, err := p.c.Metrics()
	if err != nil {
		p.t.Fatal(err)
	}
	return samples
}

// metric returns one series' value, failing the test when it is missing.
func (p *caddyProc) metric(series string) float64 {
	p.t.Helper()
	v, ok := p.metrics()[series]
	if !ok {
		p.t.Fatalf("/metrics has no series %s", series)
	}
	return v
}

// awaitMetric polls /metrics until series satisfies ok, failing after
// waitLong. Metrics move when the server has acted, which the test cannot
// otherwise observe: there is no event to await but the value itself.
func (p *caddyProc) awaitMetric(series string, what string, ok func(float64) bool) float64 {
	p.t.Helper()
	deadline := time.Now().Add(waitLong)
	var v float64
	for {
		v = p.metric(series)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s is %v, want %s within %v", series, v, what, waitLong)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetricsMoveAndSurviveReload reads the admin /metrics after traffic:
// every metric the README lists is there, moves with traffic, has no per-room or
// per-client label, and a reload does not reset it.
func TestMetricsMoveAndSurviveReload(t *testing.T) {
	body := func(tag string) string {
		return "\theader X-Config " + tag + "\n\tchatroom /ws {\n\t\troom {query.room}\n\t\trate_limit 2 1h\n\t\tmax_message_size 256B\n\t}\n\troot * {{root}}\n\tfile_server"
	}
	p := startCaddy(t, body("one"))
	before := p.metrics()
	for _, s := range []string{seriesOpen, seriesReceived, seriesLimited, seriesDelivered, seriesMcErrors, seriesDropped(dropSlowConsumer), seriesDropped(dropTooBig)} {
		if _, ok := before[s]; !ok {
			t.Errorf("/metrics lacks %s before any traffic", s)
		}
	}
	checkLowCardinality(t, before)

	a := dial(t, p.url("ws", "/ws?room=metrics-a"), nil)
	aid, _ := a.login()
	b := dial(t, p.url("ws", "/ws?room=metrics-a"), nil)
	b.login()
	a.await("b's join", func(f frame) bool { return f.str("event") == "join" })
	other := dial(t, p.url("ws", "/ws?room=metrics-b"), nil)
	other.login()
	if got := p.awaitMetric(seriesOpen, "3", func(v float64) bool { return v == 3 }); got != 3 {
		t.Fatalf("open connections %v, want 3", got)
	}

	// Two chat messages are relayed, the third is over the rate limit.
	for i := range 3 {
		a.send(map[string]any{"msg": fmt.Sprintf("m%d", i)})
	}
	a.await("rate_limited error", func(f frame) bool { return f.str("error") == ErrCodeRateLimited })
	b.await("m1", func(f frame) bool { return f.str("msg") == "m1" && f.str("from_id") == aid })
	// An oversize frame drops the room-b client with reason message_too_big.
	other.sendRaw(websocket.TextMessage, []byte(`{"msg":"`+strings.Repeat("x", 300)+`"}`))
	if code := other.awaitClose(); code != websocket.CloseMessageTooBig {
		t.Fatalf("oversize frame: close code %d, want %d", code, websocket.CloseMessageTooBig)
	}

	p.awaitMetric(seriesOpen, "2 after one client was dropped", func(v float64) bool { return v == 2 })
	after := p.metrics()
	checkLowCardinality(t, after)
	moved := []struct {
		series string
		delta  float64
	}{
		{seriesReceived, 2},
		{seriesLimited, 1},
		{seriesDropped(dropTooBig), 1},
	}
	for _, m := range moved {
		if d := after[m.series] - before[m.series]; d != m.delta {
			t.Errorf("%s moved by %v, want %v", m.series, d, m.delta)
		}
	}
	// Welcome, online list, join, two chat frames, the error frame: at
	// least 8 frames went out.
	if d := after[seriesDelivered] - before[seriesDelivered]; d < 8 {
		t.Errorf("%s moved by %v, want at least 8", seriesDelivered, d)
	}

	// A reload with an unchanged chatroom config keeps every value.
	p.reload(body("two"))
	awaitHeader(t, p, "X-Config", "two")
	reloaded := p.metrics()
	for _, s := range []string{seriesOpen, seriesReceived, seriesLimited, seriesDelivered, seriesDropped(dropTooBig)} {
		if reloaded[s] < after[s] {
			t.Errorf("%s went from %v to %v across a reload", s, after[s], reloaded[s])
		}
	}
	if reloaded[seriesOpen] != 2 {
		t.Errorf("open connections after reload %v, want 2", reloaded[seriesOpen])
	}

	// And they keep counting after it.
	b.send(map[string]any{"msg": "after reload"})
	a.await("b's message after the reload", func(f frame) bool { return f.str("msg") == "after reload" })
	p.awaitMetric(seriesReceived, "one more after the reload", func(v float64) bool { return v == after[seriesReceived]+1 })
}

// checkLowCardinality fails when a chatroom series has a label other than
// the drop reason: room names and client ids must never become labels.
func checkLowCardinality(t *testing.T, samples map[string]float64) {
	t.Helper()
	// The only labels: each of these metrics has one, from a fixed set.
	allowed := map[string]string{
		"caddy_chatroom_clients_dropped_total":           "reason",
		"caddy_chatroom_memcached_requests_total":        "kind",
		"caddy_chatroom_memcached_values_rejected_total": "value",
	}
	values := make(map[string]int)
	for s := range samples {
		if !strings.HasPrefix(s, "caddy_chatroom_") {
			continue
		}
		name, labels, hasLabels := strings.Cut(s, "{")
		if !hasLabels {
			continue
		}
		label, ok := allowed[name]
		if !ok || !strings.HasPrefix(labels, label+`="`) || strings.Count(labels, "=") != 1 {
			t.Errorf("series %s has a label besides the fixed ones", s)
		}
		values[name]++
	}
	for name, n := range values {
		if n > 16 {
			t.Errorf("%d values of %s's label: not low-cardinality", n, name)
		}
	}
}

// awaitHeader polls the site until a plain GET answers with header set to
// want: the sign that a reload has taken effect.
func awaitHeader(t *testing.T, p *caddyProc, header, want string) {
	t.Helper()
	client := http.Client{Timeout: waitLong}
	deadline := time.Now().Add(waitLong)
	for {
		resp, err := client.Get(p.url("http", "/"))
		if err == nil {
			got := resp.Header.Get(header)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if got == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never became %q after the reload (last error %v)", header, want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLogsOneLinePerConnection: through Caddy's logger, at debug level, a
// connection logs one line when it opens and one when it closes (with the
// reason), and nothing per message.
func TestLogsOneLinePerConnection(t *testing.T) {
	p := startCaddy(t, faultSite("rate_limit 1000 1s"))
	rc := joinRoom(t, p.url("ws", "/ws"), 3)
	a, b, c := rc.clients[0], rc.clients[1], rc.clients[2]
	for i := range 50 {
		a.send(map[string]any{"msg": fmt.Sprintf("m%d", i)})
	}
	a.send(map[string]any{"nick": "alice"})
	a.sendRaw(websocket.TextMessage, []byte("not json"))
	b.await("a's last message", isChat(rc.ids[0], "m49"))
	c.sendRaw(websocket.BinaryMessage, []byte("binary"))
	c.awaitClose()
	_ = a.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(waitLong))
	a.awaitClose()

	lines := func() (opened, closed []string, other []string) {
		for _, line := range strings.Split(p.out.String(), "\n") {
			if !strings.Contains(line, `"logger":"http.handlers.chatroom"`) {
				continue
			}
			switch {
			case strings.Contains(line, `"msg":"connection opened"`):
				opened = append(opened, line)
			case strings.Contains(line, `"msg":"connection closed"`):
				closed = append(closed, line)
			default:
				other = append(other, line)
			}
		}
		return
	}
	// The close line is written just after the leave the others see:
	// poll the output for it.
	deadline := time.Now().Add(waitLong)
	opened, closed, other := lines()
	for len(closed) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		opened, closed, other = lines()
	}
	if len(opened) != 3 || len(closed) != 2 || len(other) != 0 {
		t.Fatalf("chatroom log lines: %d opened (want 3), %d closed (want 2), others %q", len(opened), len(closed), other)
	}
	for _, line := range append(opened, closed...) {
		if !strings.Contains(line, `"level":"debug"`) || !strings.Contains(line, `"id":"`) || !strings.Contains(line, `"room":"lobby"`) {
			t.Errorf("log line lacks debug level, id or room: %s", line)
		}
	}
	reasons := map[string]bool{}
	for _, line := range closed {
		for _, r := range []string{`"reason":"client"`, `"reason":"` + dropBinary + `"`} {
			if strings.Contains(line, r) {
				reasons[r] = true
			}
		}
	}
	if len(reasons) != 2 {
		t.Errorf("close lines %q: want one closed by the client and one for the binary frame", closed)
	}
}

// TestMemcachedOutageCountedAndLogged: while memcached is down the members
// of an instance keep chatting, the failures are counted in
// memcached_errors_total, and the outage is logged once when it starts (at
// warn) and once when memcached returns (at info), not once per message.
func TestMemcachedOutageCountedAndLogged(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	m := testenv.StartMemcached(t)
	p := startCaddyCluster(t, "rate_limit 1000 1s", m.Addr)
	rc := joinRoom(t, p.url("ws", "/ws"), 2)
	a, b := rc.clients[0], rc.clients[1]
	errorsBefore := p.metric(seriesMcErrors)

	m.Stop()
	for i := range 30 {
		a.send(map[string]any{"msg": fmt.Sprintf("during %d", i)})
	}
	for i := range 30 {
		b.await(fmt.Sprintf("message %d during the outage", i), isChat(rc.ids[0], fmt.Sprintf("during %d", i)))
	}
	p.awaitMetric(seriesMcErrors, "more than before the outage", func(v float64) bool { return v > errorsBefore })
	awaitLogLines(t, p, `"msg":"memcached unreachable`, 1)

	m.Start()
	awaitLogLines(t, p, `"msg":"memcached reachable again`, 1)
	b.send(map[string]any{"msg": "after"})
	a.await("a message after memcached returned", isChat(rc.ids[1], "after"))

	var warnings []string
	for _, line := range strings.Split(p.out.String(), "\n") {
		if strings.Contains(line, `"logger":"http.handlers.chatroom`) && (strings.Contains(line, `"level":"warn"`) || strings.Contains(line, `"level":"error"`)) {
			warnings = append(warnings, line)
		}
	}
	if len(warnings) > 3 {
		t.Errorf("%d warnings for one outage and 31 messages, want at most 3:\n%s", len(warnings), strings.Join(warnings, "\n"))
	}
	if n := countLogLines(p, `"msg":"memcached unreachable`); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
}

// countLogLines counts the chatroom's log lines containing s.
func countLogLines(p *caddyProc, s string) int {
	n := 0
	for _, line := range strings.Split(p.out.String(), "\n") {
		if strings.Contains(line, `"logger":"http.handlers.chatroom`) && strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// awaitLogLines polls Caddy's output until n chatroom log lines contain s.
func awaitLogLines(t *testing.T, p *caddyProc, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for countLogLines(p, s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d log lines with %s within %v, want %d", countLogLines(p, s), s, waitLong, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
