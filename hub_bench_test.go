package chatroom

// Microbenchmarks of the fan-out: one chat message from one member to every
// other member of a room, over real loopback WebSocket connections, counted
// when the last byte has reached every client.
//
//	go test -run '^$' -bench Broadcast -benchmem -count 6 > new.txt
//	go run golang.org/x/perf/cmd/benchstat@latest old.txt new.txt

import (
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

func BenchmarkBroadcast(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run("members="+strconv.Itoa(n), func(b *testing.B) { benchBroadcast(b, n) })
	}
}

// TestBroadcastBenchmarkRuns keeps BenchmarkBroadcast working, since CI
// runs no benchmarks: its room is built without serve, so a change to how
// a connection starts can break it unseen.
func TestBroadcastBenchmarkRuns(t *testing.T) {
	res := testing.Benchmark(func(b *testing.B) { benchBroadcast(b, 10) })
	if res.N == 0 {
		t.Fatal("BenchmarkBroadcast with 10 members failed; run go test -run '^$' -bench Broadcast to see why")
	}
}

// benchRoom is a room of real connections: the server side of each is a
// chat member, the client side only counts the bytes it reads.
type benchRoom struct {
	hub     *hub
	members []*conn
	clients []net.Conn
	read    atomic.Int64 // bytes read by every client
	target  atomic.Int64 // what waitRead waits for
	reached chan struct{}
}

func newBenchRoom(b *testing.B, n int) *benchRoom {
	b.Helper()
	br := &benchRoom{hub: newHub(newEmbeddedRegistry(), newMetrics(), zap.NewNop()), reached: make(chan struct{}, 1)}
	if err := br.hub.start(); err != nil {
		b.Fatal(err)
	}
	r, err := br.hub.room("bench", DefaultPresenceLimit)
	if err != nil {
		b.Fatal(err)
	}
	tr := wsio.NewTransport(zap.NewNop())
	b.Cleanup(tr.Close)
	upgrader := wsio.NewUpgrader(wsio.Compression{})
	opts := connOptions{sendQueue: 1 << 16, pingInterval: time.Hour, rateLimit: 1e9, rateBurst: 1e9}
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
		if err := wc.WriteFrames(nil, false); err != nil { // the held handshake
			b.Error(err)
			return
		}
		accepted <- wc
	})}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })

	url := "ws://" + ln.Addr().String() + "/"
	for i := range n {
		cws, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			b.Fatalf("dialing member %d: %v", i, err)
		}
		var wc wsio.Conn
		select {
		case wc = <-accepted:
		case <-time.After(10 * time.Second):
			b.Fatal("server did not accept a connection")
		}
		c := newConn(wc, br.hub, "bench", chat.Member{ID: strconv.Itoa(i + 1)}, opts, zap.NewNop())
		c.room, c.index = r, i
		c.writing = false // no serve here to hold the writer (newConn)
		r.members = append(r.members, c)
		br.members = append(br.members, c)
		nc := cws.NetConn()
		br.clients = append(br.clients, nc)
		go func() {
			buf := make([]byte, 32<<10)
			for {
				k, err := nc.Read(buf)
				if total := br.read.Add(int64(k)); total >= br.target.Load() {
					select {
					case br.reached <- struct{}{}:
					default:
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
	b.Cleanup(func() {
		for _, c := range br.members {
			_ = c.wc.Close()
		}
		for _, nc := range br.clients {
			_ = nc.Close()
		}
	})
	return br
}

// waitRead waits until the clients have read want bytes in all.
func (br *benchRoom) waitRead(b *testing.B, want int64) {
	br.target.Store(want)
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for br.read.Load() < want {
		select {
		case <-br.reached:
		case <-timeout.C:
			b.Fatalf("clients read %d bytes, want %d", br.read.Load(), want)
		}
	}
}

// wireSize is the size of a server text frame carrying payload.
func wireSize(payload []byte) int64 {
	switch n := len(payload); {
	case n < 126:
		return int64(2 + n)
	case n < 1<<16:
		return int64(4 + n)
	default:
		return int64(10 + n)
	}
}

func benchBroadcast(b *testing.B, n int) {
	br := newBenchRoom(b, n)
	sender := br.members[0]
	const text = "a 64-byte chat message, much like the ones chatbench sends......"
	sized := chat.NewChat(sender.member, text, time.Now())
	sized.Seq = uint64(time.Now().UnixMicro()) // as long as the seqs stamped: 16 digits
	frame := encodeFrame(sized)
	perMessage := wireSize(frame) * int64(n-1)
	// At most this many messages are in flight, as a window of senders
	// would keep them: the benchmark measures fan-out, not queueing.
	const window = 32

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if i >= window {
			br.waitRead(b, int64(i-window)*perMessage)
		}
		br.hub.chat(sender, text)
	}
	br.waitRead(b, int64(b.N)*perMessage)
	elapsed := time.Since(start)
	b.StopTimer()
	if got := br.read.Load(); got != int64(b.N)*perMessage {
		b.Fatalf("clients read %d bytes, want %d (frame size changed mid-run?)", got, int64(b.N)*perMessage)
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N*(n-1)), "ns/delivery")
}
