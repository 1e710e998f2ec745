package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// runCluster measures a memcached cluster of real Caddy instances on
// loopback: what memcached serves (its cmd_get, which counts keys), the
// instances' CPU, and cross-instance latency, in the scenarios of
// docs/cluster.md. It starts memcached and the instances itself, from the
// Caddy binary given, so that two builds (before and after a change) run
// the same scenarios on the same machine.
func runCluster(args []string) error {
	fs := flag.NewFlagSet("cluster", flag.ExitOnError)
	caddyBin := fs.String("caddy", "", "Caddy binary with the chatroom module (required)")
	mcBin := fs.String("memcached", "/usr/bin/memcached", "memcached binary")
	scenarios := fs.String("scenarios", "idle,fresh,load,bigroom", "comma-separated: idle, fresh, load, bigroom")
	idleRooms := fs.String("idle-rooms", "1,1000,10000", "room counts of the idle scenario")
	idleInstances := fs.String("idle-instances", "2,3", "instance counts of the idle scenario")
	settle := fs.Duration("settle", 8*time.Second, "wait after the clients are in, before measuring")
	window := fs.Duration("window", 10*time.Second, "measuring window")
	label := fs.String("label", "", "label for the results (e.g. before, after)")
	jsonOut := fs.String("json", "", "append each result as one JSON line to this file")
	basePort := fs.Int("port", 19300, "first of the loopback ports used (memcached, then one per instance)")
	bigMembers := fs.Int("bigroom-members", 2000, "members of the big room on each of the 2 instances")
	_ = fs.Parse(args)
	if *caddyBin == "" {
		return fmt.Errorf("-caddy is required")
	}
	if *window <= 0 || *window > 5*time.Minute || *settle < 0 || *settle > 5*time.Minute {
		return fmt.Errorf("-window and -settle must be within 5m")
	}
	raiseFileLimit()
	run := func(name string, instances int, f func(*clusterEnv) (map[string]float64, error)) error {
		env, err := startCluster(*caddyBin, *mcBin, *basePort, instances)
		if err != nil {
			return err
		}
		defer env.stop()
		figures, err := f(env)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		res := clusterResult{Label: *label, Scenario: name, Instances: instances, Figures: figures}
		res.print()
		if *jsonOut != "" {
			return res.appendJSON(*jsonOut)
		}
		return nil
	}
	for _, sc := range strings.Split(*scenarios, ",") {
		var err error
		switch sc {
		case "idle":
			for _, n := range splitInts(*idleInstances) {
				for _, rooms := range splitInts(*idleRooms) {
					err = run(fmt.Sprintf("idle-%d-rooms", rooms), n, func(e *clusterEnv) (map[string]float64, error) {
						return e.idle(rooms, *settle, *window)
					})
					if err != nil {
						return err
					}
				}
			}
		case "fresh":
			err = run("fresh-1000-rooms-in-10s", 2, func(e *clusterEnv) (map[string]float64, error) { return e.fresh(1000, 10*time.Second) })
		case "load":
			err = run("load-100-rooms-200-msg-s", 2, func(e *clusterEnv) (map[string]float64, error) { return e.load(100, 200, *window) })
		case "bigroom":
			err = run(fmt.Sprintf("bigroom-%d-per-instance", *bigMembers), 2, func(e *clusterEnv) (map[string]float64, error) { return e.bigRoom(*bigMembers, *window) })
		default:
			return fmt.Errorf("unknown scenario %q", sc)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func splitInts(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 && n <= 100000 {
			out = append(out, n)
		}
	}
	return out
}

// clusterResult is one scenario's figures.
type clusterResult struct {
	Label     string             `json:"label"`
	Scenario  string             `json:"scenario"`
	Instances int                `json:"instances"`
	Figures   map[string]float64 `json:"figures"`
}

func (r clusterResult) print() {
	keys := make([]string, 0, len(r.Figures))
	for k := range r.Figures {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%.1f", k, r.Figures[k])
	}
	fmt.Printf("%s %s instances=%d%s\n", r.Label, r.Scenario, r.Instances, b.String())
}

func (r clusterResult) appendJSON(path string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	return json.NewEncoder(f).Encode(r)
}

// clusterEnv is memcached and the Caddy instances of one scenario.
type clusterEnv struct {
	dir       string
	mcAddr    string
	mc        *exec.Cmd
	instances []*exec.Cmd
	urls      []*url.URL

	holders []holder

	mu    sync.Mutex
	conns []*websocket.Conn
}

func startCluster(caddyBin, mcBin string, port, n int) (*clusterEnv, error) {
	dir, err := os.MkdirTemp("", "chatbench-cluster-")
	if err != nil {
		return nil, err
	}
	e := &clusterEnv{dir: dir, mcAddr: fmt.Sprintf("127.0.0.1:%d", port)}
	mcArgs := []string{"-l", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "0", "-m", "1024", "-c", "4096", "-t", "2"}
	if os.Geteuid() == 0 {
		mcArgs = append(mcArgs, "-u", "root")
	}
	e.mc = exec.Command(mcBin, mcArgs...)
	if err := e.mc.Start(); err != nil {
		return nil, fmt.Errorf("starting memcached: %w", err)
	}
	if err := testenv.AwaitPort(e.mcAddr, nil); err != nil {
		e.stop()
		return nil, err
	}
	for i := 0; i < n; i++ {
		p := port + 1 + i
		conf := fmt.Sprintf(`{
	admin off
	log {
		level ERROR
	}
}

http://127.0.0.1:%d {
	chatroom /ws {
		memcached %s
		room {query.room}
		rate_limit 1000000 1s
		send_queue 4096
	}
}
`, p, e.mcAddr)
		path := filepath.Join(dir, fmt.Sprintf("Caddyfile.%d", i))
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			e.stop()
			return nil, err
		}
		cmd := exec.Command(caddyBin, "run", "--config", path, "--adapter", "caddyfile")
		cmd.Stderr = nil
		if err := cmd.Start(); err != nil {
			e.stop()
			return nil, fmt.Errorf("starting caddy: %w", err)
		}
		e.instances = append(e.instances, cmd)
		if err := testenv.AwaitPort(fmt.Sprintf("127.0.0.1:%d", p), nil); err != nil {
			e.stop()
			return nil, err
		}
		u, _ := url.Parse(fmt.Sprintf("ws://127.0.0.1:%d/ws", p))
		e.urls = append(e.urls, u)
	}
	return e, nil
}

func (e *clusterEnv) stop() {
	for _, h := range e.holders {
		_ = h.stdin.Close()
		done := make(chan struct{})
		go func() { _ = h.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = h.cmd.Process.Kill()
			<-done
		}
	}
	e.mu.Lock()
	conns := e.conns
	e.conns = nil
	e.mu.Unlock()
	closeAll(conns, time.Second)
	for _, c := range e.instances {
		_ = c.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	if e.mc != nil && e.mc.Process != nil {
		_ = e.mc.Process.Kill()
		_ = e.mc.Wait()
	}
	_ = os.RemoveAll(e.dir)
}

// stat reads one of memcached's general statistics, trying three times:
// a memcached the old design overloads answers late.
func (e *clusterEnv) stat(name string) (uint64, error) {
	var err error
	for try := 0; try < 3; try++ {
		var n uint64
		if n, err = e.statOnce(name); err == nil {
			return n, nil
		}
	}
	return 0, err
}

func (e *clusterEnv) statOnce(name string) (uint64, error) {
	c, err := net.DialTimeout("tcp", e.mcAddr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("stats\r\n")); err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 1 && f[0] == "END" {
			break
		}
		if len(f) == 3 && f[1] == name {
			return strconv.ParseUint(f[2], 10, 64)
		}
	}
	return 0, fmt.Errorf("memcached stats: no %s", name)
}

// snapshot is the counters a window is measured between.
type snapshot struct {
	at    time.Time
	gets  uint64
	cpu   []float64 // per instance
	mcCPU float64
}

func (e *clusterEnv) snap() (snapshot, error) {
	s := snapshot{at: time.Now()}
	var err error
	if s.gets, err = e.stat("cmd_get"); err != nil {
		return s, err
	}
	for _, c := range e.instances {
		p, err := readProc(c.Process.Pid)
		if err != nil {
			return s, err
		}
		s.cpu = append(s.cpu, p.CPUSeconds)
	}
	if p, err := readProc(e.mc.Process.Pid); err == nil {
		s.mcCPU = p.CPUSeconds
	}
	return s, nil
}

// between returns the rates from a to b: memcached gets/s, the mean and
// highest instance CPU (percent of a core) and memcached's.
func between(a, b snapshot) map[string]float64 {
	secs := b.at.Sub(a.at).Seconds()
	out := map[string]float64{"gets_per_s": float64(b.gets-a.gets) / secs, "memcached_cpu_pct": 100 * (b.mcCPU - a.mcCPU) / secs}
	var sum, top float64
	for i := range a.cpu {
		pct := 100 * (b.cpu[i] - a.cpu[i]) / secs
		sum += pct
		top = max(top, pct)
	}
	out["instance_cpu_pct_mean"] = sum / float64(len(a.cpu))
	out["instance_cpu_pct_max"] = top
	return out
}

// measure waits settle, then measures over window.
func (e *clusterEnv) measure(settle, window time.Duration) (map[string]float64, error) {
	time.Sleep(settle) // letting start-up traffic pass before a fixed window
	a, err := e.snap()
	if err != nil {
		return nil, err
	}
	time.Sleep(window) // measuring a rate over a fixed window
	b, err := e.snap()
	if err != nil {
		return nil, err
	}
	return between(a, b), nil
}

// open dials n connections to instance i, in the rooms room(k), and keeps
// reading them; onText gets the chat texts each receives.
func (e *clusterEnv) open(i, n int, room func(k int) string, onText func(k int, text []byte)) ([]*websocket.Conn, error) {
	conns, err := dialAll(n, 64, func(k int) string { return roomURL(e.urls[i], "room", room(k)) })
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.conns = append(e.conns, conns...)
	e.mu.Unlock()
	// A connection has joined when its first frame (the welcome) arrives:
	// open returns once all have, so that no join is still queued when a
	// measurement starts.
	var joined sync.WaitGroup
	joined.Add(len(conns))
	for k, ws := range conns {
		go func() {
			first := true
			for {
				_, frame, err := ws.ReadMessage()
				if first {
					first = false
					joined.Done()
				}
				if err != nil {
					return
				}
				if onText != nil {
					eachOurs(frame, func(text []byte) { onText(k, text) })
				}
			}
		}()
	}
	if !waitGroupTimeout(&joined, 3*time.Minute) {
		return nil, fmt.Errorf("%d connections to instance %d not all welcomed within 3m", n, i)
	}
	return conns, nil
}

// idle holds one member per room on every instance, nobody speaking. Each
// instance's members are held by a child process ("chatbench hold"), so
// that 10,000 rooms on 3 instances stay within one process's open files.
func (e *clusterEnv) idle(rooms int, settle, window time.Duration) (map[string]float64, error) {
	for i := range e.instances {
		cmd := exec.Command(os.Args[0], "hold", "-url", e.urls[i].String(), "-rooms", strconv.Itoa(rooms))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		e.holders = append(e.holders, holder{cmd, stdin})
		ready := make(chan error, 1)
		go func() {
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err == nil && strings.TrimSpace(line) != "ready" {
				err = fmt.Errorf("holder said %q", line)
			}
			ready <- err
		}()
		select {
		case err := <-ready:
			if err != nil {
				return nil, fmt.Errorf("holding %d members on instance %d: %w", rooms, i, err)
			}
		case <-time.After(4 * time.Minute):
			return nil, fmt.Errorf("holding %d members on instance %d: not ready within 4m", rooms, i)
		}
	}
	return e.measure(settle, window)
}

// holder is a child process holding connections until its stdin closes.
type holder struct {
	cmd   *exec.Cmd
	stdin interface{ Close() error }
}

// runHold dials one member per room idle-0..rooms-1, prints "ready" once
// all are welcomed, and holds them until stdin closes.
func runHold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	rawURL := fs.String("url", "", "WebSocket URL (loopback only)")
	rooms := fs.Int("rooms", 1, "rooms, one member each")
	_ = fs.Parse(args)
	if *rooms < 1 || *rooms > 19000 {
		return fmt.Errorf("-rooms must be 1 to 19000")
	}
	base, err := checkLoopback(*rawURL)
	if err != nil {
		return err
	}
	raiseFileLimit()
	e := &clusterEnv{urls: []*url.URL{base}}
	if _, err := e.open(0, *rooms, func(k int) string { return "idle-" + strconv.Itoa(k) }, nil); err != nil {
		return err
	}
	fmt.Println("ready")
	buf := make([]byte, 64)
	for {
		if _, err := os.Stdin.Read(buf); err != nil {
			break
		}
	}
	closeAll(e.conns, time.Second)
	return nil
}

// fresh opens rooms new rooms evenly over d, one member on each of two
// instances, and measures memcached during that time and the same time
// after.
func (e *clusterEnv) fresh(rooms int, d time.Duration) (map[string]float64, error) {
	a, err := e.snap()
	if err != nil {
		return nil, err
	}
	tick := time.NewTicker(d / time.Duration(rooms))
	defer tick.Stop()
	for k := 0; k < rooms; k++ {
		<-tick.C
		for i := 0; i < 2; i++ {
			name := "fresh-" + strconv.Itoa(k)
			if _, err := e.open(i, 1, func(int) string { return name }, nil); err != nil {
				return nil, err
			}
		}
	}
	b, err := e.snap()
	if err != nil {
		return nil, err
	}
	time.Sleep(d) // the same window after the rooms are open
	c, err := e.snap()
	if err != nil {
		return nil, err
	}
	out := between(a, b)
	after := between(b, c)
	for k, v := range after {
		out["after_"+k] = v
	}
	return out, nil
}

// latencies collects cross-instance delivery times.
type latencies struct {
	from atomic.Int64 // messages sent before this (ns since start) warm up
	mu   sync.Mutex
	h    histogram
	n    atomic.Int64
}

func (l *latencies) add(text []byte, start time.Time) {
	_, _, sent, err := parseText(text)
	if err != nil || sent < l.from.Load() {
		return
	}
	l.mu.Lock()
	l.h.add(time.Since(start) - time.Duration(sent))
	l.mu.Unlock()
	l.n.Add(1)
}

// load: rooms rooms with one member on each of two instances; the members
// on the first send rate messages a second in all, round robin, and those
// on the second measure when they arrive. A second member of each room on
// the first instance measures local delivery, which waits for the room's
// seq from memcached (one round trip) and never for a poll.
func (e *clusterEnv) load(rooms, rate int, window time.Duration) (map[string]float64, error) {
	start := time.Now()
	var lat, local latencies
	room := func(k int) string { return "load-" + strconv.Itoa(k) }
	if _, err := e.open(1, rooms, room, func(_ int, text []byte) { lat.add(text, start) }); err != nil {
		return nil, err
	}
	if _, err := e.open(0, rooms, room, func(_ int, text []byte) { local.add(text, start) }); err != nil {
		return nil, err
	}
	senders, err := e.open(0, rooms, room, nil)
	if err != nil {
		return nil, err
	}
	time.Sleep(2 * time.Second) // presence settles before the window
	a, err := e.snap()
	if err != nil {
		return nil, err
	}
	// The first second warms up: the receiving instance still polls at
	// its idle period until the first messages arrive.
	const warmUp = time.Second
	lat.from.Store(int64(time.Since(start) + warmUp))
	local.from.Store(lat.from.Load())
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	sent := 0
	buf := make([]byte, 0, 128)
	for end := time.Now().Add(warmUp + window); time.Now().Before(end); {
		<-tick.C
		k := sent % rooms
		buf = makeText(buf[:0], k, uint64(sent), int64(time.Since(start)), 64)
		msg, _ := json.Marshal(map[string]string{"msg": string(buf)})
		if err := senders[k].WriteMessage(websocket.TextMessage, msg); err != nil {
			return nil, err
		}
		sent++
	}
	b, err := e.snap()
	if err != nil {
		return nil, err
	}
	time.Sleep(time.Second) // the last messages arrive
	out := between(a, b)
	lat.mu.Lock()
	defer lat.mu.Unlock()
	out["sent"] = float64(sent)
	out["received"] = float64(lat.n.Load())
	out["p50_ms"] = ms(lat.h.quantile(0.5))
	out["p99_ms"] = ms(lat.h.quantile(0.99))
	local.mu.Lock()
	defer local.mu.Unlock()
	out["local_received"] = float64(local.n.Load())
	out["local_p50_ms"] = ms(local.h.quantile(0.5))
	out["local_p99_ms"] = ms(local.h.quantile(0.99))
	return out, nil
}

// bigRoom: per members in one room on each of two instances; one message a
// second from the first instance, its delivery measured at every member of
// the second.
func (e *clusterEnv) bigRoom(per int, window time.Duration) (map[string]float64, error) {
	start := time.Now()
	var lat latencies
	room := func(int) string { return "big" }
	joinStart := time.Now()
	if _, err := e.open(1, per, room, func(_ int, text []byte) { lat.add(text, start) }); err != nil {
		return nil, err
	}
	senders, err := e.open(0, per, room, nil)
	if err != nil {
		return nil, err
	}
	joined := time.Since(joinStart)
	time.Sleep(5 * time.Second) // the join storm's presence settles
	a, err := e.snap()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 0, 128)
	n := int(window / time.Second)
	for k := 0; k < n; k++ {
		buf = makeText(buf[:0], 0, uint64(k), int64(time.Since(start)), 64)
		msg, _ := json.Marshal(map[string]string{"msg": string(buf)})
		if err := senders[0].WriteMessage(websocket.TextMessage, msg); err != nil {
			return nil, err
		}
		time.Sleep(time.Second) // one message a second
	}
	b, err := e.snap()
	if err != nil {
		return nil, err
	}
	out := between(a, b)
	lat.mu.Lock()
	defer lat.mu.Unlock()
	out["join_s"] = joined.Seconds()
	// Convergence: a probe joining each instance is told the room's size;
	// the true size is every member plus the probe.
	for i := range 2 {
		count, err := e.probeCount(i, "big")
		if err != nil {
			return nil, err
		}
		out[fmt.Sprintf("count_seen_%d_minus_true", i+1)] = float64(count - (2*per + 1))
	}
	out["deliveries"] = float64(lat.n.Load())
	out["p50_ms"] = ms(lat.h.quantile(0.5))
	out["p99_ms"] = ms(lat.h.quantile(0.99))
	return out, nil
}

// probeCount joins room on instance i and returns the size its online frame
// reports: `count` for a room past presence_limit, else the length of the
// list.
func (e *clusterEnv) probeCount(i int, room string) (int, error) {
	conns, err := dialAll(1, 1, func(int) string { return roomURL(e.urls[i], "room", room) })
	if err != nil {
		return 0, err
	}
	ws := conns[0]
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, frame, err := ws.ReadMessage()
		if err != nil {
			return 0, fmt.Errorf("probe of instance %d: %w", i, err)
		}
		var f struct {
			Event  string            `json:"event"`
			Count  string            `json:"count"`
			Online []json.RawMessage `json:"online"`
		}
		if json.Unmarshal(frame, &f) != nil || f.Event != "online" {
			continue
		}
		if f.Count == "" {
			return len(f.Online), nil
		}
		return strconv.Atoi(f.Count)
	}
}
