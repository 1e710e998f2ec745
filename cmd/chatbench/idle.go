package main

import (
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// runIdle opens connections, holds them without sending, and reports the
// server's memory per connection.
func runIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	rawURL := fs.String("url", "ws://127.0.0.1:8080/ws", "WebSocket URL (loopback only)")
	proto := fs.String("proto", "ours", "protocol: ours or baseline (only labels the result)")
	n := fs.Int("clients", 1000, "connections to open and hold")
	hold := fs.Duration("hold", 20*time.Second, "how long to hold them once all are open")
	pid := fs.Int("pid", 0, "server process id, to report its memory from /proc")
	roomSize := fs.Int("room-size", 0, "put this many connections per room (adds room=idle-<k> to the query); 0 keeps the URL's room")
	roomParam := fs.String("room-param", "room", "query parameter that names the room, with -room-size")
	parallel := fs.Int("dial-parallel", 64, "connections being opened at once")
	label := fs.String("label", "", "label for the result")
	scenario := fs.String("scenario", "", "scenario name for the result")
	jsonOut := fs.String("json", "", "append the result as one JSON line to this file")
	deflate := fs.Bool("deflate", false, "clients offer permessage-deflate")
	_ = fs.Parse(args)

	if *n < 1 || *n > 100000 {
		return fmt.Errorf("-clients must be 1 to 100000")
	}
	if *hold < 0 || *hold > time.Hour {
		return fmt.Errorf("-hold must be at most 1h")
	}
	base, err := checkLoopback(*rawURL)
	if err != nil {
		return err
	}
	if limit := raiseFileLimit(); limit > 0 && uint64(*n)+64 > limit {
		return fmt.Errorf("-clients %d needs more open files than this process may have (%d): split the load across processes", *n, limit)
	}
	if *label == "" {
		*label = *proto
	}
	res := &result{Mode: "idle", Scenario: *scenario, Label: *label, Proto: *proto, Clients: *n, HoldSeconds: hold.Seconds()}

	var before procSample
	if *pid != 0 {
		if before, err = readProc(*pid); err != nil {
			return err
		}
	}
	t0 := time.Now()
	conns, err := dialAllWith(dialerFor(*deflate), *n, *parallel, func(i int) string {
		if *roomSize > 0 {
			return roomURL(base, *roomParam, fmt.Sprintf("idle-%d", i / *roomSize))
		}
		return base.String()
	})
	if err != nil {
		return err
	}
	res.ConnectSeconds = time.Since(t0).Seconds()

	// Readers consume what the server sends (welcome, presence, pings) and
	// notice a connection the server drops.
	var closing atomic.Bool
	var dropped atomic.Int64
	var wg sync.WaitGroup
	for _, ws := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, _, err := ws.NextReader(); err != nil {
					if !closing.Load() {
						dropped.Add(1)
					}
					return
				}
			}
		}()
	}
	time.Sleep(*hold)
	if *pid != 0 {
		after, err := readProc(*pid)
		if err != nil {
			res.ProcError = err.Error()
		} else {
			res.RSSBeforeMiB = float64(before.RSSBytes) / mib
			res.RSSAfterMiB = float64(after.RSSBytes) / mib
			res.ServerPeakMiB = float64(after.HWMBytes) / mib
			res.KiBPerConn = float64(after.RSSBytes-before.RSSBytes) / 1024 / float64(*n)
			res.ServerCPUSeconds = after.CPUSeconds - before.CPUSeconds
		}
	}
	res.Disconnects = int(dropped.Load())
	closing.Store(true)
	closeAll(conns, time.Second)
	waitGroupTimeout(&wg, 10*time.Second)
	res.print()
	if *jsonOut != "" {
		return res.appendJSON(*jsonOut)
	}
	return nil
}
