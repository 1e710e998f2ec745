package main

import (
	"errors"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// runStorm has a reader and a sender chat in one room while waves of
// clients join it and leave it, and reports whether the reader, which keeps
// reading, was closed by the server (an eviction) and what it missed.
func runStorm(args []string) error {
	fs := flag.NewFlagSet("storm", flag.ExitOnError)
	rawURL := fs.String("url", "ws://127.0.0.1:8080/ws", "WebSocket URL (loopback only)")
	protoName := fs.String("proto", "ours", "protocol: ours or baseline")
	churn := fs.Int("churn", 800, "clients that join, all at once, then leave, per wave")
	duration := fs.Duration("duration", 15*time.Second, "how long waves go on (at most 50 waves)")
	rate := fs.Float64("rate", 20, "the sender's messages per second")
	payload := fs.Int("payload", 64, "chat text size in bytes (at least 32)")
	parallel := fs.Int("dial-parallel", 64, "connections being opened at once")
	drain := fs.Duration("drain", 3*time.Second, "longest wait for the reader's last messages")
	pid := fs.Int("pid", 0, "server process id, to report its CPU time and memory from /proc")
	label := fs.String("label", "", "label for the result")
	scenario := fs.String("scenario", "", "scenario name for the result")
	jsonOut := fs.String("json", "", "append the result as one JSON line to this file")
	_ = fs.Parse(args)

	proto, ok := protocols[*protoName]
	switch {
	case !ok:
		return fmt.Errorf("-proto %q: want ours or baseline", *protoName)
	case *churn < 1 || *churn > 20000:
		return fmt.Errorf("-churn must be 1 to 20000")
	case *duration <= 0 || *duration > 10*time.Minute:
		return fmt.Errorf("-duration must be positive and at most 10m")
	case *rate <= 0 || *rate > 10000:
		return fmt.Errorf("-rate must be above 0 and at most 10000")
	case *payload < 32 || *payload > 60000:
		return fmt.Errorf("-payload must be 32 to 60000")
	}
	if *label == "" {
		*label = *protoName
	}
	base, err := checkLoopback(*rawURL)
	if err != nil {
		return err
	}
	raiseFileLimit()
	pair, err := dialAll(2, 2, func(int) string { return base.String() })
	if err != nil {
		return err
	}
	reader, sender := pair[0], pair[1]
	res := &result{Mode: "storm", Scenario: *scenario, Label: *label, Proto: proto.name, Clients: *churn + 2, Senders: 1, Rate: *rate, Payload: *payload}

	var before procSample
	if *pid != 0 {
		if before, err = readProc(*pid); err != nil {
			return err
		}
	}
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }

	// The reader takes every frame as it comes and counts the sender's texts.
	var (
		delivered atomic.Uint64
		gaps      atomic.Uint64
		hist      histogram
		closing   atomic.Bool
		evicted   atomic.Bool
		closeText atomic.Value
	)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 0, 4096)
		var next uint64
		for {
			_, rd, err := reader.NextReader()
			if err != nil {
				if !closing.Load() {
					evicted.Store(true)
					var ce *websocket.CloseError
					if errors.As(err, &ce) {
						closeText.Store(fmt.Sprintf("%d %s", ce.Code, ce.Text))
					} else {
						closeText.Store(err.Error())
					}
				}
				return
			}
			if buf, err = readAll(rd, buf[:0]); err != nil {
				continue
			}
			proto.each(buf, func(text []byte) {
				s, seq, sent, err := parseText(text)
				if err != nil || s != 1 {
					return
				}
				if seq > next {
					gaps.Add(1)
				}
				if seq >= next {
					next = seq + 1
				}
				delivered.Add(1)
				hist.add(time.Duration(now() - sent))
			})
		}
	}()
	// The baseline echoes the sender's own messages back: drain them.
	go func() {
		for {
			if _, _, err := sender.NextReader(); err != nil {
				return
			}
		}
	}()

	// Waves: every churn client joins, then every one leaves.
	stop := make(chan struct{})
	var waves, joins atomic.Int64
	var churnErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		deadline := time.Now().Add(*duration)
		for w := 0; w < 50 && time.Now().Before(deadline); w++ {
			conns, err := dialAll(*churn, *parallel, func(int) string { return base.String() })
			if err != nil {
				churnErr = err
				break
			}
			joins.Add(int64(len(conns)))
			closeAll(conns, time.Second)
			waves.Add(1)
		}
		close(stop)
	}()

	// The sender chats at a steady rate until the waves are over.
	interval := time.Duration(float64(time.Second) / *rate)
	text := make([]byte, 0, *payload)
	frame := make([]byte, 0, *payload+16)
	var sent uint64
	tick := time.NewTicker(interval)
sending:
	for {
		select {
		case <-stop:
			break sending
		case <-tick.C:
		}
		text = makeText(text[:0], 1, sent, now(), *payload)
		frame = proto.encode(frame[:0], text)
		_ = sender.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := sender.WriteMessage(websocket.TextMessage, frame); err != nil {
			break
		}
		sent++
	}
	tick.Stop()
	wg.Wait()
	sendSeconds := time.Since(start).Seconds()
	deadline := time.Now().Add(*drain)
	for delivered.Load() < sent && !evicted.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if *pid != 0 {
		after, err := readProc(*pid)
		if err != nil {
			res.ProcError = err.Error()
		} else {
			res.ServerCPUSeconds = after.CPUSeconds - before.CPUSeconds
			res.ServerRSSMiB = float64(after.RSSBytes) / mib
			res.ServerPeakMiB = float64(after.HWMBytes) / mib
		}
	}
	closing.Store(true)
	closeAll(pair, time.Second)
	select {
	case <-readerDone:
	case <-time.After(10 * time.Second):
	}

	res.SendSeconds = sendSeconds
	res.Sent, res.Expected, res.Delivered = sent, sent, delivered.Load()
	res.Lost = int64(sent) - int64(res.Delivered)
	res.Gaps = gaps.Load()
	res.P50ms, res.P99ms, res.MaxMs = ms(hist.quantile(0.50)), ms(hist.quantile(0.99)), ms(hist.max)
	res.Joins = joins.Load()
	res.Waves = waves.Load()
	if evicted.Load() {
		res.Disconnects = 1
		res.CloseReason, _ = closeText.Load().(string)
	}
	res.print()
	if *jsonOut != "" {
		if err := res.appendJSON(*jsonOut); err != nil {
			return err
		}
	}
	if churnErr != nil {
		return fmt.Errorf("storm wave: %w", churnErr)
	}
	return nil
}
