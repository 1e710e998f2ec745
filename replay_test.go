package chatroom

// Tests of what a resume's replay costs the server (resume.go,
// framecache.go): frames shared between connections, written in chunks, a
// client that reads none of it closed as a slow consumer, and a cap on the
// big replays in progress.

import (
	"context"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// fullRoom fills the room at url with n chat messages of size bytes each
// (as JSON frames), read by a member so that the test knows they are all
// held. It returns the sender's id.
func fullRoom(t *testing.T, url string, n, size int) string {
	t.Helper()
	rc := joinRoom(t, url, 2)
	sender, reader := rc.clients[0], rc.clients[1]
	text := strings.Repeat("x", size-len(`{"msg":"m0000 "}`))
	for i := range n {
		sender.send(map[string]any{"msg": fmt.Sprintf("m%04d %s", i, text)})
	}
	last := fmt.Sprintf("m%04d %s", n-1, text)
	reader.await("the last message of the fill", isChat(rc.ids[0], last))
	return rc.ids[0]
}

// dialStalled opens a WebSocket connection whose client never reads past
// the handshake, with a receive buffer of 4 KiB: the server can hand the
// kernel almost nothing of what it sends.
func dialStalled(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{
		HandshakeTimeout: waitLong,
		NetDialContext: (&net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
			if err != nil {
				return err
			}
			return serr
		}}).DialContext,
	}
	ws, _, err := d.DialContext(context.Background(), url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return ws
}

// TestStalledResumersBounded: 100 clients resume with since=0 in a room of
// 1,000 full-size (8 KiB) messages and read nothing. Each replay is 8 MB;
// the server holds at most 1 MB for each (heap in use after GC, and RSS),
// where it held a copy of the whole replay per connection before (about
// 10 MB each, and none was closed). Every one of them is closed as a slow
// consumer once its first chunk is not read within the write deadline. Up
// to maxReplays big replays run at once: one more resumer is refused with
// 1013, and once the stalled ones are gone a resumer gets the whole replay.
func TestStalledResumersBounded(t *testing.T) {
	p := startCaddy(t, faultSite("rate_limit 100000 1s", "resume_window 10m"))
	url := p.url("ws", "/ws")
	const messages, size = 1000, DefaultMaxMessageSize
	senderID := fullRoom(t, url, messages, size)

	slowBefore := p.metric(seriesDropped(dropSlowConsumer))
	heapBefore := heapInuse(t, p)
	rssBefore := p.metric("process_resident_memory_bytes")

	const stalled = 100
	for range stalled {
		dialStalled(t, url+"?since=0")
	}
	p.awaitMetric("caddy_chatroom_connections_open", "every stalled resumer joined", func(v float64) bool { return v == 2+stalled })
	heapDuring := heapInuse(t, p)
	rssDuring := p.metric("process_resident_memory_bytes")
	heapEach := (heapDuring - heapBefore) / stalled
	rssEach := (rssDuring - rssBefore) / stalled
	t.Logf("%d stalled since=0 resumers of %d messages of %d bytes: heap in use after GC %.1f → %.1f MiB (%.0f KiB each), RSS %.1f → %.1f MiB (%.0f KiB each)",
		stalled, messages, size, heapBefore/(1<<20), heapDuring/(1<<20), heapEach/1024, rssBefore/(1<<20), rssDuring/(1<<20), rssEach/1024)
	if heapEach > 1<<20 {
		t.Fatalf("each stalled resumer costs %.0f KiB of heap; want at most 1 MiB", heapEach/1024)
	}
	// The race detector's shadow memory multiplies RSS: only a plain
	// build's is the server's.
	if rssEach > 1<<20 && !testenv.RaceEnabled {
		t.Fatalf("each stalled resumer costs %.0f KiB of RSS; want at most 1 MiB", rssEach/1024)
	}

	// Up to maxReplays: then one more resumer, which reads, is refused.
	for range maxReplays - stalled {
		dialStalled(t, url+"?since=0")
	}
	p.awaitMetric("caddy_chatroom_connections_open", "maxReplays stalled resumers joined", func(v float64) bool { return v == 2+maxReplays })
	extra := dial(t, url+"?since=0", nil)
	if code := extra.awaitClose(); code != websocket.CloseTryAgainLater {
		t.Fatalf("a resume past %d big replays in progress: close code %d, want 1013", maxReplays, code)
	}

	// None of the stalled ones reads a chunk within WriteWait: each is
	// closed as a slow consumer, and leaves.
	p.awaitMetric(seriesDropped(dropSlowConsumer), "every stalled resumer closed as a slow consumer", func(v float64) bool { return v == slowBefore+maxReplays })
	p.awaitMetric("caddy_chatroom_connections_open", "the stalled resumers gone", func(v float64) bool { return v == 2 })

	// Their slots are free again, and a resumer that reads gets the whole
	// replay, in order.
	c := dial(t, url+"?since=0", nil)
	c.login()
	chats, resumed := c.replay(t)
	if len(chats) != messages {
		t.Fatalf("replayed %d messages, want %d", len(chats), messages)
	}
	for i, f := range chats {
		if f.str("from_id") != senderID || !strings.HasPrefix(f.str("msg"), fmt.Sprintf("m%04d ", i)) {
			t.Fatalf("replayed frame %d is %.80v, want m%04d from %s", i, f, i, senderID)
		}
	}
	if resumed.str("missed") != fmt.Sprint(messages) {
		t.Fatalf("resumed frame %v, want missed %d", resumed, messages)
	}
}
