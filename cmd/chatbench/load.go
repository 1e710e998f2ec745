package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// loadConfig is what `chatbench load` is asked to do.
type loadConfig struct {
	url, proto     string
	clients        int
	senders        int
	rate           float64
	window         int
	payload        int
	duration       time.Duration
	drain          time.Duration
	settle         time.Duration
	pid            int
	dialParallel   int
	label, json    string
	scenario       string
	windowTimeout  time.Duration
	deflate        bool
	quietThreshold time.Duration
}

func runLoad(args []string) error {
	var cfg loadConfig
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	fs.StringVar(&cfg.url, "url", "ws://127.0.0.1:8080/ws", "WebSocket URL (loopback only)")
	fs.StringVar(&cfg.proto, "proto", "ours", "protocol: ours or baseline")
	fs.IntVar(&cfg.clients, "clients", 100, "connections in the room, senders included")
	fs.IntVar(&cfg.senders, "senders", 1, "connections that send")
	fs.Float64Var(&cfg.rate, "rate", 0, "messages per second per sender; 0 sends as fast as -window allows")
	fs.IntVar(&cfg.window, "window", 16, "with -rate 0: messages per sender in flight (sent, not yet delivered to every recipient)")
	fs.IntVar(&cfg.payload, "payload", 64, "chat text size in bytes (at least 32)")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "how long the senders send")
	fs.DurationVar(&cfg.drain, "drain", 5*time.Second, "longest wait for outstanding deliveries after sending stops; what has not arrived by then is lost")
	fs.DurationVar(&cfg.settle, "settle", 10*time.Second, "longest wait, after connecting, for the server's join frames to stop")
	fs.IntVar(&cfg.pid, "pid", 0, "server process id, to report its CPU time and memory from /proc")
	fs.IntVar(&cfg.dialParallel, "dial-parallel", 32, "connections being opened at once")
	fs.StringVar(&cfg.label, "label", "", "label for the result (e.g. ours, baseline)")
	fs.StringVar(&cfg.scenario, "scenario", "", "scenario name for the result (e.g. S1)")
	fs.StringVar(&cfg.json, "json", "", "append the result as one JSON line to this file")
	fs.BoolVar(&cfg.deflate, "deflate", false, "clients offer permessage-deflate (and compress what they send, as browsers do)")
	fs.DurationVar(&cfg.windowTimeout, "window-timeout", 2*time.Second, "longest wait for a window slot before sending anyway (counted as a stall)")
	_ = fs.Parse(args)
	cfg.quietThreshold = 500 * time.Millisecond

	proto, ok := protocols[cfg.proto]
	if !ok {
		return fmt.Errorf("-proto %q: want ours or baseline", cfg.proto)
	}
	switch {
	case cfg.clients < 2 || cfg.clients > 100000:
		return fmt.Errorf("-clients must be 2 to 100000")
	case cfg.senders < 1 || cfg.senders > cfg.clients:
		return fmt.Errorf("-senders must be 1 to -clients")
	case cfg.rate < 0 || cfg.rate > 100000:
		return fmt.Errorf("-rate must be 0 to 100000")
	case cfg.rate == 0 && (cfg.window < 1 || cfg.window > 1024):
		return fmt.Errorf("-window must be 1 to 1024")
	case cfg.payload < 32 || cfg.payload > 60000:
		return fmt.Errorf("-payload must be 32 to 60000")
	case cfg.duration <= 0 || cfg.duration > time.Hour:
		return fmt.Errorf("-duration must be positive and at most 1h")
	}
	if cfg.label == "" {
		cfg.label = cfg.proto
	}
	base, err := checkLoopback(cfg.url)
	if err != nil {
		return err
	}
	raiseFileLimit()

	conns, err := dialAllWith(dialerFor(cfg.deflate), cfg.clients, cfg.dialParallel, func(int) string { return base.String() })
	if err != nil {
		return err
	}
	r := newLoadRun(cfg, proto, conns)
	res := r.run()
	res.print()
	if cfg.json != "" {
		return res.appendJSON(cfg.json)
	}
	return nil
}

// ringSize is how many recent messages per sender the window tracks.
const ringSize = 1 << 12

// loadRun is one load test in progress.
type loadRun struct {
	cfg     loadConfig
	proto   protocol
	clients []*client
	start   time.Time // the monotonic zero of every timestamp

	live       atomic.Int64  // clients whose reader still runs
	delivered  atomic.Uint64 // chat texts received, all clients
	frames     atomic.Uint64 // frames received, all clients
	expected   atomic.Uint64
	sent       atomic.Uint64
	stalls     atomic.Uint64
	lastRecvNS atomic.Int64
	closing    atomic.Bool

	// Per sender, for the window: deliveries still due per message, and
	// a semaphore of messages in flight.
	due   [][]atomic.Int64
	slots []chan struct{}

	readers sync.WaitGroup
}

// client is one connection and what its reader saw.
type client struct {
	idx  int
	ws   *websocket.Conn
	next []uint64 // per sender: the sequence number expected next
	hist histogram

	delivered, frames     uint64
	gaps, reordered, self uint64
	malformed             uint64
	disconnected          bool
	closeCode             int
}

func newLoadRun(cfg loadConfig, proto protocol, conns []*websocket.Conn) *loadRun {
	r := &loadRun{cfg: cfg, proto: proto, start: time.Now()}
	r.clients = make([]*client, len(conns))
	for i, ws := range conns {
		r.clients[i] = &client{idx: i, ws: ws, next: make([]uint64, cfg.senders)}
	}
	r.due = make([][]atomic.Int64, cfg.senders)
	r.slots = make([]chan struct{}, cfg.senders)
	for s := range r.due {
		r.due[s] = make([]atomic.Int64, ringSize)
		r.slots[s] = make(chan struct{}, max(cfg.window, 1))
	}
	return r
}

func (r *loadRun) now() int64 { return int64(time.Since(r.start)) }

func (r *loadRun) run() *result {
	r.live.Store(int64(len(r.clients)))
	for _, c := range r.clients {
		r.readers.Add(1)
		go r.read(c)
	}
	r.waitQuiet()

	before, _ := r.sample()
	cpu0 := selfCPU()
	framesBefore := r.frames.Load()
	sendStart := r.now()
	var senders sync.WaitGroup
	for s := 0; s < r.cfg.senders; s++ {
		senders.Add(1)
		go func() {
			defer senders.Done()
			r.send(s, sendStart)
		}()
	}
	senders.Wait()
	sendEnd := r.now()

	// Drain: wait for what is due, bounded.
	deadline := time.Now().Add(r.cfg.drain)
	for r.delivered.Load() < r.expected.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	after, procErr := r.sample()
	cpu1 := selfCPU()

	r.closing.Store(true)
	closeAll(r.wsList(), time.Second)
	waitGroupTimeout(&r.readers, 10*time.Second)

	res := r.result(sendStart, sendEnd, before, after, procErr)
	res.ClientCPUSeconds = cpu1 - cpu0
	res.Frames = r.frames.Load() - framesBefore
	return res
}

// waitQuiet waits until no frame has arrived for a moment (the join frames
// of the clients that just connected), bounded by -settle.
func (r *loadRun) waitQuiet() {
	deadline := time.Now().Add(r.cfg.settle)
	last := r.frames.Load()
	quietSince := time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if n := r.frames.Load(); n != last {
			last, quietSince = n, time.Now()
			continue
		}
		if time.Since(quietSince) >= r.cfg.quietThreshold {
			return
		}
	}
}

func (r *loadRun) sample() (procSample, error) {
	if r.cfg.pid == 0 {
		return procSample{}, nil
	}
	return readProc(r.cfg.pid)
}

func (r *loadRun) wsList() []*websocket.Conn {
	out := make([]*websocket.Conn, len(r.clients))
	for i, c := range r.clients {
		out[i] = c.ws
	}
	return out
}

// recipients is how many deliveries a message sent now is due.
func (r *loadRun) recipients() int64 {
	n := r.live.Load()
	if !r.proto.echo {
		n--
	}
	return max(n, 0)
}

// send runs sender s until the duration is over.
func (r *loadRun) send(s int, startNS int64) {
	ws := r.clients[s].ws
	endNS := startNS + int64(r.cfg.duration)
	var interval int64
	if r.cfg.rate > 0 {
		interval = int64(float64(time.Second) / r.cfg.rate)
	}
	text := make([]byte, 0, r.cfg.payload)
	frame := make([]byte, 0, r.cfg.payload+16)
	for seq := uint64(0); ; seq++ {
		if interval > 0 {
			at := startNS + int64(seq)*interval
			if at >= endNS {
				return
			}
			if wait := at - r.now(); wait > 0 {
				time.Sleep(time.Duration(wait))
			}
		} else {
			if r.now() >= endNS {
				return
			}
			select {
			case r.slots[s] <- struct{}{}:
			case <-time.After(r.cfg.windowTimeout):
				r.stalls.Add(1)
			}
		}
		due := r.recipients()
		r.due[s][seq%ringSize].Store(due)
		r.expected.Add(uint64(due))
		text = makeText(text[:0], s, seq, r.now(), r.cfg.payload)
		frame = r.proto.encode(frame[:0], text)
		if err := ws.WriteMessage(websocket.TextMessage, frame); err != nil {
			r.expected.Add(^uint64(due - 1)) // not sent: nothing is due
			return
		}
		r.sent.Add(1)
	}
}

// read runs client c's reader until its connection ends.
func (r *loadRun) read(c *client) {
	defer r.readers.Done()
	buf := make([]byte, 0, 4096)
	for {
		_, rd, err := c.ws.NextReader()
		if err != nil {
			if !r.closing.Load() {
				c.disconnected = true
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					c.closeCode = ce.Code
				}
				r.live.Add(-1)
			}
			return
		}
		buf, err = readAll(rd, buf[:0])
		if err != nil {
			continue // the next NextReader call reports it
		}
		c.frames++
		r.frames.Add(1)
		r.proto.each(buf, func(text []byte) { r.deliver(c, text) })
	}
}

// deliver accounts for one chat text received by c.
func (r *loadRun) deliver(c *client, text []byte) {
	now := r.now()
	s, seq, sent, err := parseText(text)
	if err != nil || s >= len(c.next) {
		c.malformed++
		return
	}
	if s == c.idx && !r.proto.echo {
		c.self++
	}
	switch {
	case seq < c.next[s]:
		c.reordered++
	case seq > c.next[s]:
		c.gaps++
	}
	if seq >= c.next[s] {
		c.next[s] = seq + 1
	}
	c.delivered++
	c.hist.add(time.Duration(now - sent))
	r.delivered.Add(1)
	r.lastRecvNS.Store(now)
	if r.cfg.rate == 0 && r.due[s][seq%ringSize].Add(-1) == 0 {
		select {
		case <-r.slots[s]:
		default:
		}
	}
}

// readAll reads a frame into buf, reusing its memory.
func readAll(rd io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

func waitGroupTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
