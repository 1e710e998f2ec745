// Command chatsoak runs a bounded soak of the chatroom module against a real
// Caddy and a real memcached on loopback: clients connect, chat and leave
// at random while Caddy reloads an unchanged chatroom config and memcached
// restarts (losing every key). Then it checks that no message was lost
// between the clients that stayed the whole time, that Caddy's goroutines
// came back to their baseline and that its heap is near its baseline.
//
// Usage, from the repository root:
//
//	go run ./cmd/chatsoak -duration 2m
//	go run ./cmd/chatsoak -duration 5m -stayers 20 -churners 80 -caddy ./caddy
//	go run ./cmd/chatsoak -duration 2m -race
//
// Without -caddy it builds ./cmd/caddy first. It exits 1 when a check
// fails, and prints its figures either way.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// settings are the soak's flags.
type settings struct {
	duration  time.Duration
	stayers   int
	churners  int
	interval  time.Duration
	caddyBin  string
	race      bool
	slackGR   int
	heapSlack float64
}

func main() {
	var s settings
	flag.DurationVar(&s.duration, "duration", 2*time.Minute, "how long clients chat and churn (at most 30m)")
	flag.IntVar(&s.stayers, "stayers", 10, "clients connected for the whole soak, checked for loss")
	flag.IntVar(&s.churners, "churners", 40, "clients that connect, chat and leave at random, concurrently")
	flag.DurationVar(&s.interval, "interval", 200*time.Millisecond, "time between two messages of a stayer")
	flag.StringVar(&s.caddyBin, "caddy", "", "Caddy binary with the chatroom module (default: build ./cmd/caddy)")
	flag.BoolVar(&s.race, "race", false, "build ./cmd/caddy with the race detector and fail on a reported race")
	flag.IntVar(&s.slackGR, "goroutine-slack", 5, "goroutines above the baseline still counted as back to baseline")
	flag.Float64Var(&s.heapSlack, "heap-slack", 1.5, "final heap in use may be this many times the baseline's (plus 8 MiB)")
	flag.Parse()
	if s.duration <= 0 || s.duration > 30*time.Minute || s.stayers < 2 || s.stayers > 500 || s.churners < 0 || s.churners > 1000 || s.interval < 10*time.Millisecond {
		fmt.Fprintln(os.Stderr, "chatsoak: want 0 < -duration <= 30m, 2 <= -stayers <= 500, 0 <= -churners <= 1000, -interval >= 10ms")
		os.Exit(2)
	}
	if err := run(s); err != nil {
		fmt.Fprintln(os.Stderr, "chatsoak: FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("chatsoak: PASS")
}

// sample is one reading of Caddy's runtime figures.
type sample struct {
	goroutines float64
	heapInuse  float64
	rss        float64
	open       float64
}

func (c *caddy) sample() (sample, error) {
	m, err := c.Metrics()
	if err != nil {
		return sample{}, err
	}
	g, ok := m["go_goroutines"]
	if !ok {
		return sample{}, errors.New("/metrics has no go_goroutines")
	}
	return sample{goroutines: g, heapInuse: m["go_memstats_heap_inuse_bytes"], rss: m["process_resident_memory_bytes"], open: m["caddy_chatroom_connections_open"]}, nil
}

func run(s settings) error {
	dir, err := os.MkdirTemp("", "chatsoak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if s.caddyBin == "" {
		s.caddyBin = filepath.Join(dir, "caddy")
		fmt.Println("building ./cmd/caddy ...")
		if err := testenv.BuildCaddy(s.caddyBin, s.race); err != nil {
			return err
		}
	}
	mc, err := startMemcached(dir)
	if err != nil {
		return err
	}
	defer func() { _ = mc.Stop() }()
	cd, err := startCaddy(s.caddyBin, dir, mc.Addr)
	if err != nil {
		return err
	}
	defer cd.Kill()
	url := fmt.Sprintf("ws://127.0.0.1:%d/ws", cd.Port)

	// Warm up: the first connection starts the registry's background work,
	// which belongs in the baseline.
	for range 2 {
		ws, _, err := login(url + "?room=soak")
		if err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		ws.Close()
	}
	base, err := settle(cd, sample{}, 0)
	if err != nil {
		return err
	}
	fmt.Printf("baseline: %s\n", base)

	// Stayers.
	stayers := make([]*stayer, s.stayers)
	byID := make(map[string]int, s.stayers)
	for i := range stayers {
		ws, id, err := login(url + "?room=soak")
		if err != nil {
			return fmt.Errorf("stayer %d: %w", i, err)
		}
		stayers[i] = &stayer{index: i, id: id, ws: ws, next: map[int]int{}, ended: map[int]bool{}, done: make(chan struct{}), others: s.stayers - 1}
		byID[id] = i
	}
	for _, st := range stayers {
		go st.read(byID)
	}
	stopChat := make(chan struct{})
	chatErrs := make(chan error, s.stayers)
	for _, st := range stayers {
		go func() { chatErrs <- st.chat(s.interval, stopChat) }()
	}

	// Churners.
	stopChurn := make(chan struct{})
	var churners sync.WaitGroup
	start := time.Now()
	stats := churnStats{start: start}
	for range s.churners {
		churners.Add(1)
		go func() {
			defer churners.Done()
			churn(url, []string{"soak", "r1", "r2", "r3"}, &stats, stopChurn)
		}()
	}

	// The faults, and a sample of the peak every second.
	peak := base
	var faults []error
	var reloadStarted, reloadEnded time.Duration
	reloadAt, restartAt := s.duration/3, 2*s.duration/3
	reloaded, restarted := false, false
	tick := time.NewTicker(time.Second)
	for time.Since(start) < s.duration {
		<-tick.C
		if now, err := cd.sample(); err == nil {
			peak = peak.max(now)
		}
		switch {
		case !reloaded && time.Since(start) >= reloadAt:
			reloaded = true
			reloadStarted = time.Since(start)
			err := cd.reload(mc.Addr, "1")
			reloadEnded = time.Since(start)
			fmt.Printf("%6.1fs reload with an unchanged chatroom config: %v (err %v)\n", reloadStarted.Seconds(), (reloadEnded - reloadStarted).Round(time.Millisecond), err)
			faults = append(faults, err)
		case !restarted && time.Since(start) >= restartAt:
			restarted = true
			err := mc.Restart()
			fmt.Printf("%6.1fs memcached restarted (every key lost): err %v\n", time.Since(start).Seconds(), err)
			faults = append(faults, err)
		}
	}
	tick.Stop()
	if err := errors.Join(faults...); err != nil {
		return err
	}

	// Wind down: churners leave, stayers send their end markers and wait
	// for everyone else's.
	close(stopChurn)
	churners.Wait()
	close(stopChat)
	for range stayers {
		if err := <-chatErrs; err != nil {
			return err
		}
	}
	deadline := time.After(60 * time.Second)
	for _, st := range stayers {
		select {
		case <-st.done:
		case <-deadline:
			st.note("stayer %d: not every end marker arrived within 60s of the end (got %d of %d)", st.index, len(st.ended), st.others)
		}
	}
	var sent, received int64
	var problems []string
	for _, st := range stayers {
		sent += st.sent.Load()
		st.mu.Lock()
		received += st.received
		problems = append(problems, st.problems...)
		st.mu.Unlock()
	}
	for _, st := range stayers {
		_ = st.ws.Close()
	}

	final, settleErr := settle(cd, base, s.slackGR)
	fmt.Printf("peak:     %s\n", peak)
	fmt.Printf("final:    %s\n", final)
	fmt.Printf("stayers: %d sent %d messages; %d deliveries expected, %d received\n", s.stayers, sent, sent*int64(s.stayers-1), received)
	fmt.Printf("churners: %d concurrent, %d connections, %d messages, %d failures %q\n", s.churners, stats.connections.Load(), stats.messages.Load(), stats.failures.Load(), stats.firstErrors)

	var errs []error
	if len(problems) > 0 {
		sort.Strings(problems)
		if len(problems) > 20 {
			problems = append(problems[:20], fmt.Sprintf("... and %d more", len(problems)-20))
		}
		errs = append(errs, fmt.Errorf("messages between stayers lost or out of order:\n  %s", strings.Join(problems, "\n  ")))
	}
	if received != sent*int64(s.stayers-1) {
		errs = append(errs, fmt.Errorf("stayers received %d messages from each other, want %d", received, sent*int64(s.stayers-1)))
	}
	// Caddy itself drops some connections that arrive while it reloads
	// (plain HTTP requests too, with no chatroom in the config): those
	// are reported, not counted against the module.
	atReload := int(stats.failures.Load()) - stats.failuresOutside(reloadStarted, reloadEnded+time.Second)
	fmt.Printf("churner connections failed within 1s of the reload (Caddy's own): %d\n", atReload)
	if n := int(stats.failures.Load()) - atReload; n > 0 {
		errs = append(errs, fmt.Errorf("%d churner connections failed away from the reload, first: %q", n, stats.firstErrors))
	}
	if settleErr != nil {
		errs = append(errs, settleErr)
	}
	if limit := base.heapInuse*s.heapSlack + 8<<20; final.heapInuse > limit {
		errs = append(errs, fmt.Errorf("heap in use %.1f MiB after the soak, baseline %.1f MiB (limit %.1f MiB)", final.heapInuse/(1<<20), base.heapInuse/(1<<20), limit/(1<<20)))
	}
	if err := cd.Stop(); err != nil {
		errs = append(errs, err)
	}
	out := cd.Output()
	if cd.Raced() {
		errs = append(errs, fmt.Errorf("caddy reported a data race:\n%s", out))
	}
	if len(errs) > 0 {
		printTrouble(out)
	}
	return errors.Join(errs...)
}

// settle waits until no chat connection is open and, when base is given,
// the goroutine count is back within slack of it (at most 60 s), then
// takes a sample after a garbage collection.
func settle(cd *caddy, base sample, slack int) (sample, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := cd.CollectGarbage(); err != nil {
			return sample{}, err
		}
		now, err := cd.sample()
		if err != nil {
			return sample{}, err
		}
		back := now.open == 0 && (base.goroutines == 0 || now.goroutines <= base.goroutines+float64(slack))
		if back {
			return now, nil
		}
		if time.Now().After(deadline) {
			return now, fmt.Errorf("after 60s: %v chat connections open, %v goroutines (baseline %v, slack %d)", now.open, now.goroutines, base.goroutines, slack)
		}
		time.Sleep(time.Second) // the background work has no event to await
	}
}

// printTrouble prints Caddy's log lines at error level or above, and any
// panic, to help explain a failed soak.
func printTrouble(out string) {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"level":"error"`) || strings.Contains(line, `"level":"warn"`) || strings.Contains(line, "panic") {
			fmt.Println("caddy:", line)
			if n++; n == 30 {
				fmt.Println("caddy: ...")
				return
			}
		}
	}
}

func (a sample) max(b sample) sample {
	if b.goroutines > a.goroutines {
		a.goroutines = b.goroutines
	}
	if b.heapInuse > a.heapInuse {
		a.heapInuse = b.heapInuse
	}
	if b.rss > a.rss {
		a.rss = b.rss
	}
	if b.open > a.open {
		a.open = b.open
	}
	return a
}

func (a sample) String() string {
	return fmt.Sprintf("goroutines %4.0f, heap in use %6.1f MiB, RSS %6.1f MiB, chat connections %4.0f", a.goroutines, a.heapInuse/(1<<20), a.rss/(1<<20), a.open)
}
