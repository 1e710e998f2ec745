package chatroom

// Microbenchmarks of the fan-out: one chat message from one member to every
// other member of a room, over real loopback WebSocket connections, counted
// when the last frame has reached every client. BenchmarkBroadcastDeflate
// is the same with every member having negotiated permessage-deflate (the
// clients count frames, they do not inflate them). Besides ns/delivery
// (wall time) each reports cpu-ns/delivery: the process's CPU time, the
// clients' reads included, which a loaded machine skews less.
//
//	go test -run '^$' -bench Broadcast -benchmem -count 6 > new.txt
//	go run golang.org/x/perf/cmd/benchstat@latest old.txt new.txt

import (
	"encoding/binary"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

func BenchmarkBroadcast(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run("members="+strconv.Itoa(n), func(b *testing.B) { benchBroadcast(b, n, wsio.Compression{}) })
	}
}

func BenchmarkBroadcastDeflate(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run("members="+strconv.Itoa(n), func(b *testing.B) {
			benchBroadcast(b, n, wsio.Compression{Enabled: true, MinSize: DefaultCompressionMinSize})
		})
	}
}

// TestBroadcastBenchmarkRuns keeps BenchmarkBroadcast working, since CI
// runs no benchmarks: its room is built without serve, so a change to how
// a connection starts can break it unseen.
func TestBroadcastBenchmarkRuns(t *testing.T) {
	for _, comp := range []wsio.Compression{{}, {Enabled: true, MinSize: DefaultCompressionMinSize}} {
		res := testing.Benchmark(func(b *testing.B) { benchBroadcast(b, 10, comp) })
		if res.N == 0 {
			t.Fatalf("BenchmarkBroadcast with 10 members (compression %v) failed; run go test -run '^$' -bench Broadcast to see why", comp.Enabled)
		}
	}
}

// benchRoom is a room of real connections: the server side of each is a
// chat member, the client side only counts the frames it reads.
type benchRoom struct {
	hub     *hub
	members []*conn
	clients []net.Conn
	read    atomic.Int64 // frames read by every client
	target  atomic.Int64 // what waitRead waits for
	reached chan struct{}
}

// frameCounter counts the server frames (unmasked) in a byte stream.
type frameCounter struct {
	hdr  [10]byte
	have int   // header bytes held
	skip int64 // payload bytes left of the current frame
}

// feed returns how many frames end in p.
func (fc *frameCounter) feed(p []byte) int {
	n := 0
	for len(p) > 0 {
		if fc.skip > 0 {
			k := min(int64(len(p)), fc.skip)
			fc.skip -= k
			p = p[k:]
			if fc.skip == 0 {
				n++
			}
			continue
		}
		fc.hdr[fc.have] = p[0]
		fc.have++
		p = p[1:]
		need := 2
		if fc.have >= 2 {
			switch fc.hdr[1] & 0x7f {
			case 126:
				need = 4
			case 127:
				need = 10
			}
		}
		if fc.have < need {
			continue
		}
		var size int64
		switch need {
		case 2:
			size = int64(fc.hdr[1] & 0x7f)
		case 4:
			size = int64(binary.BigEndian.Uint16(fc.hdr[2:4]))
		default:
			size = int64(binary.BigEndian.Uint64(fc.hdr[2:10]))
		}
		fc.have = 0
		if size == 0 {
			n++
		}
		fc.skip = size
	}
	return n
}

func newBenchRoom(b *testing.B, n int, comp wsio.Compression) *benchRoom {
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
	upgrader := wsio.NewUpgrader(comp)
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
		d := websocket.Dialer{EnableCompression: comp.Enabled}
		cws, _, err := d.Dial(url, nil)
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
		if comp.Enabled && !wc.Deflates() {
			b.Fatal("the member did not negotiate compression")
		}
		go func() {
			buf := make([]byte, 32<<10)
			var fc frameCounter
			for {
				k, err := nc.Read(buf)
				if total := br.read.Add(int64(fc.feed(buf[:k]))); total >= br.target.Load() {
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

// waitRead waits until the clients have read want frames in all.
func (br *benchRoom) waitRead(b *testing.B, want int64) {
	br.target.Store(want)
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for br.read.Load() < want {
		select {
		case <-br.reached:
		case <-timeout.C:
			b.Fatalf("clients read %d frames, want %d", br.read.Load(), want)
		}
	}
}

func benchBroadcast(b *testing.B, n int, comp wsio.Compression) {
	br := newBenchRoom(b, n, comp)
	sender := br.members[0]
	const text = "a 64-byte chat message, much like the ones chatbench sends......"
	perMessage := int64(n - 1)
	// At most this many messages are in flight, as a window of senders
	// would keep them: the benchmark measures fan-out, not queueing.
	const window = 32

	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU(b)
	for i := range b.N {
		if i >= window {
			br.waitRead(b, int64(i-window)*perMessage)
		}
		br.hub.chat(sender, text)
	}
	br.waitRead(b, int64(b.N)*perMessage)
	elapsed, cpu := time.Since(start), processCPU(b)-cpu0
	b.StopTimer()
	if got := br.read.Load(); got != int64(b.N)*perMessage {
		b.Fatalf("clients read %d frames, want %d", got, int64(b.N)*perMessage)
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N*(n-1)), "ns/delivery")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*(n-1)), "cpu-ns/delivery")
}

// processCPU is the user and system CPU time of the process so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
