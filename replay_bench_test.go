package chatroom

// A benchmark of what stalled resumers cost the server, in process: the
// heap each one adds while its replay waits on a client that reads nothing.
//
//	go test -run '^$' -bench StalledResume -benchtime 3x

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// BenchmarkStalledResume: 100 clients resume with since=0 in a room of
// 1,000 messages of 8 KiB (8 MB each replay) and never read. It reports the
// heap in use after GC that each adds (heap-B/resumer), the shared frames
// included; the README's Limits quote it.
func BenchmarkStalledResume(b *testing.B) {
	const resumers, messages = 100, 1000
	var perResumer float64
	for range b.N {
		perResumer = benchStalledResume(b, resumers, messages, DefaultMaxMessageSize)
	}
	b.ReportMetric(perResumer, "heap-B/resumer")
}

// TestStalledResumeBenchmarkRuns keeps BenchmarkStalledResume working (CI
// runs no benchmarks), at a tenth of its size, and holds it to its bound:
// at most 1 MiB of heap per stalled resumer.
func TestStalledResumeBenchmarkRuns(t *testing.T) {
	res := testing.Benchmark(func(b *testing.B) {
		b.ReportMetric(benchStalledResume(b, 10, 200, DefaultMaxMessageSize), "heap-B/resumer")
	})
	if res.N == 0 {
		t.Fatal("BenchmarkStalledResume failed; run go test -run '^$' -bench StalledResume to see why")
	}
	if got := res.Extra["heap-B/resumer"]; got > 1<<20 {
		t.Fatalf("a stalled resumer costs %.0f KiB of heap, want at most 1 MiB", got/1024)
	}
}

// benchStalledResume fills a room with messages of size bytes, joins n
// resumers from since=0 whose clients never read, and returns the heap in
// use after GC that each added.
func benchStalledResume(b *testing.B, n, messages, size int) float64 {
	b.Helper()
	h := newHub(newEmbeddedRegistry(), newMetrics(), zap.NewNop())
	h.keepWindow(time.Hour)
	if err := h.start(); err != nil {
		b.Fatal(err)
	}
	text := strings.Repeat("x", size-len(`{"from_id":"1","msg":"","msg_time":"1456690889","seq":"1764870000000000"}`))
	for range messages {
		h.reg.Publish("bench", chat.NewChat(chat.Member{ID: "1"}, text, time.Now()))
	}

	tr := wsio.NewTransport(zap.NewNop())
	defer tr.Close()
	upgrader := wsio.NewUpgrader(wsio.Compression{})
	accepted := make(chan wsio.Conn, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		wc, err := tr.Upgrade(upgrader, w, req)
		if err != nil {
			b.Error(err)
			return
		}
		accepted <- wc
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	// The clients: a 4 KiB receive buffer, and no reads past the
	// handshake.
	dialer := websocket.Dialer{NetDialContext: (&net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}).DialContext}
	opts := connOptions{sendQueue: DefaultSendQueue, pingInterval: time.Hour, rateLimit: 1, rateBurst: 1,
		resume: resumeRequest{asked: true, valid: true}, presenceLimit: DefaultPresenceLimit}

	b.StopTimer()
	before := heapInuse0()
	b.StartTimer()
	var conns []*conn
	var clients []*websocket.Conn
	for i := range n {
		done := make(chan *websocket.Conn, 1)
		go func() {
			ws, _, err := dialer.Dial("ws://"+ln.Addr().String()+"/", nil)
			if err != nil {
				b.Errorf("dialing resumer %d: %v", i, err)
			}
			done <- ws
		}()
		var wc wsio.Conn
		select {
		case wc = <-accepted:
		case <-time.After(10 * time.Second):
			b.Fatal("server did not accept a connection")
		}
		c := newConn(wc, h, "bench", chat.Member{}, opts, zap.NewNop())
		c.serve(context.Background()) // returns once joined; the replay's writer stays blocked
		conns = append(conns, c)
		if ws := <-done; ws != nil {
			clients = append(clients, ws)
		}
	}
	b.StopTimer()
	added := float64(heapInuse0()-before) / float64(n)
	// The clients go first, so that the blocked writes fail at once
	// rather than at their deadline.
	for _, ws := range clients {
		_ = ws.Close()
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.closeWith(websocket.CloseGoingAway, "benchmark over", dropShutdown) })
	}
	wg.Wait()
	b.StartTimer()
	return added
}

// heapInuse0 is this process's heap in use after a GC.
func heapInuse0() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
