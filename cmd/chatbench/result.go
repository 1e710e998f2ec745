package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// result is what one run measured; `chatbench table` reads it back.
type result struct {
	Mode     string `json:"mode"` // load, idle or storm
	Scenario string `json:"scenario,omitempty"`
	Label    string `json:"label"`
	Proto    string `json:"proto"`
	Clients  int    `json:"clients"`

	// load
	Senders          int     `json:"senders,omitempty"`
	Rate             float64 `json:"rate,omitempty"`
	Window           int     `json:"window,omitempty"`
	Payload          int     `json:"payload,omitempty"`
	SendSeconds      float64 `json:"send_seconds,omitempty"`
	Sent             uint64  `json:"sent"`
	Expected         uint64  `json:"expected"`
	Delivered        uint64  `json:"delivered"`
	Lost             int64   `json:"lost"`
	Frames           uint64  `json:"frames"`
	DeliveriesPerSec float64 `json:"deliveries_per_sec"`
	P50ms            float64 `json:"p50_ms"`
	P99ms            float64 `json:"p99_ms"`
	MaxMs            float64 `json:"max_ms"`
	Disconnects      int     `json:"disconnects"`
	Gaps             uint64  `json:"gaps"`
	Reordered        uint64  `json:"reordered"`
	Self             uint64  `json:"self"`
	Malformed        uint64  `json:"malformed"`
	Stalls           uint64  `json:"stalls"`
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`

	// server, with -pid
	ServerCPUSeconds float64 `json:"server_cpu_seconds,omitempty"`
	ServerRSSMiB     float64 `json:"server_rss_mib,omitempty"`
	ServerPeakMiB    float64 `json:"server_peak_mib,omitempty"`
	ProcError        string  `json:"proc_error,omitempty"`

	// idle
	HoldSeconds    float64 `json:"hold_seconds,omitempty"`
	RSSBeforeMiB   float64 `json:"rss_before_mib,omitempty"`
	RSSAfterMiB    float64 `json:"rss_after_mib,omitempty"`
	KiBPerConn     float64 `json:"kib_per_conn,omitempty"`
	ConnectSeconds float64 `json:"connect_seconds,omitempty"`

	// storm: clients that joined and left, in how many waves, and why the
	// reader was closed, if it was (Disconnects is then 1).
	Joins       int64  `json:"joins,omitempty"`
	Waves       int64  `json:"waves,omitempty"`
	CloseReason string `json:"close_reason,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

const mib = 1 << 20

func (r *loadRun) result(sendStart, sendEnd int64, before, after procSample, procErr error) *result {
	res := &result{
		Mode: "load", Scenario: r.cfg.scenario, Label: r.cfg.label, Proto: r.proto.name,
		Clients: len(r.clients), Senders: r.cfg.senders, Rate: r.cfg.rate, Payload: r.cfg.payload,
		SendSeconds: float64(sendEnd-sendStart) / 1e9,
		Sent:        r.sent.Load(), Expected: r.expected.Load(), Stalls: r.stalls.Load(),
	}
	if r.cfg.rate == 0 {
		res.Window = r.cfg.window
	}
	var h histogram
	for _, c := range r.clients {
		h.merge(&c.hist)
		res.Delivered += c.delivered
		res.Gaps += c.gaps
		res.Reordered += c.reordered
		res.Self += c.self
		res.Malformed += c.malformed
		if c.disconnected {
			res.Disconnects++
		}
	}
	res.Lost = int64(res.Expected) - int64(res.Delivered)
	if last := r.lastRecvNS.Load(); last > sendStart {
		res.DeliveriesPerSec = float64(res.Delivered) / (float64(last-sendStart) / 1e9)
	}
	res.P50ms, res.P99ms, res.MaxMs = ms(h.quantile(0.50)), ms(h.quantile(0.99)), ms(h.max)
	if r.cfg.pid != 0 {
		if procErr != nil {
			res.ProcError = procErr.Error()
		} else {
			res.ServerCPUSeconds = after.CPUSeconds - before.CPUSeconds
			res.ServerRSSMiB = float64(after.RSSBytes) / mib
			res.ServerPeakMiB = float64(after.HWMBytes) / mib
		}
	}
	return res
}

func (res *result) print() {
	switch res.Mode {
	case "load":
		fmt.Printf("%s %s: %d clients, %d senders, rate %.0f/s, window %d, payload %d B, sent for %.1fs\n",
			res.Scenario, res.Label, res.Clients, res.Senders, res.Rate, res.Window, res.Payload, res.SendSeconds)
		fmt.Printf("  sent %d messages; deliveries expected %d, delivered %d, lost %d (%d frames while sending and draining)\n",
			res.Sent, res.Expected, res.Delivered, res.Lost, res.Frames)
		fmt.Printf("  %.0f deliveries/s; latency p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
			res.DeliveriesPerSec, res.P50ms, res.P99ms, res.MaxMs)
		fmt.Printf("  disconnects %d, gaps %d, reordered %d, own messages back %d, malformed %d, window stalls %d\n",
			res.Disconnects, res.Gaps, res.Reordered, res.Self, res.Malformed, res.Stalls)
		fmt.Printf("  load tool CPU %.1fs", res.ClientCPUSeconds)
		if res.ServerRSSMiB > 0 {
			fmt.Printf("; server CPU %.1fs, RSS %.1f MiB, peak %.1f MiB", res.ServerCPUSeconds, res.ServerRSSMiB, res.ServerPeakMiB)
		}
		fmt.Println()
	case "idle":
		fmt.Printf("%s %s: %d idle connections opened in %.1fs, held %.0fs, %d dropped\n",
			res.Scenario, res.Label, res.Clients, res.ConnectSeconds, res.HoldSeconds, res.Disconnects)
		if res.RSSAfterMiB > 0 {
			fmt.Printf("  server RSS %.1f -> %.1f MiB (peak %.1f): %.2f KiB per connection\n",
				res.RSSBeforeMiB, res.RSSAfterMiB, res.ServerPeakMiB, res.KiBPerConn)
			fmt.Printf("  server CPU %.2fs to fill and hold\n", res.ServerCPUSeconds)
		}
	case "storm":
		fmt.Printf("%s %s: %d clients joined and left in %d waves over %.1fs while a reader and a sender chatted\n",
			res.Scenario, res.Label, res.Joins, res.Waves, res.SendSeconds)
		fmt.Printf("  sent %d, reader got %d, lost %d, gaps %d; latency p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
			res.Sent, res.Delivered, res.Lost, res.Gaps, res.P50ms, res.P99ms, res.MaxMs)
		fmt.Printf("  reader evicted: %d %s", res.Disconnects, res.CloseReason)
		if res.ServerRSSMiB > 0 {
			fmt.Printf("; server CPU %.1fs, RSS %.1f MiB, peak %.1f MiB", res.ServerCPUSeconds, res.ServerRSSMiB, res.ServerPeakMiB)
		}
		fmt.Println()
	}
	if res.ProcError != "" {
		fmt.Println("  server stats:", res.ProcError)
	}
}

func (res *result) appendJSON(path string) error {
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("writing result: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("writing result: %w", err)
	}
	return nil
}
