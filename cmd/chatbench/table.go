package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
)

// runTable prints, from result files, a markdown table of medians per
// scenario, ours against the baseline.
func runTable(args []string) error {
	fs := flag.NewFlagSet("table", flag.ExitOnError)
	labelA := fs.String("a", "ours", "label of the first column")
	labelB := fs.String("b", "baseline", "label of the column it is compared with")
	_ = fs.Parse(args)
	files := fs.Args()
	if len(files) == 0 {
		return fmt.Errorf("table: name at least one results file")
	}
	runs := map[string]map[string][]*result{} // scenario -> label -> runs
	var scenarios []string
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("table: %w", err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var r result
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				f.Close()
				return fmt.Errorf("table: %s: %w", name, err)
			}
			if runs[r.Scenario] == nil {
				runs[r.Scenario] = map[string][]*result{}
				scenarios = append(scenarios, r.Scenario)
			}
			runs[r.Scenario][r.Label] = append(runs[r.Scenario][r.Label], &r)
		}
		f.Close()
	}
	sort.Strings(scenarios)
	fmt.Printf("| scenario | metric | %[1]s (median) | %[2]s (median) | %[1]s / %[2]s | runs |\n", *labelA, *labelB)
	fmt.Println("|---|---|---:|---:|---:|---|")
	for _, s := range scenarios {
		ours, base := runs[s][*labelA], runs[s][*labelB]
		rows := loadRows
		switch mode := modeOf(ours, base); mode {
		case "idle":
			rows = idleRows
		case "storm":
			rows = stormRows
		}
		for _, row := range rows {
			o, b := median(ours, row.get), median(base, row.get)
			ratio := "–"
			if b != 0 {
				ratio = fmt.Sprintf("%.2f", o/b)
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %d / %d |\n", s, row.name, fmtNum(o), fmtNum(b), ratio, len(ours), len(base))
		}
	}
	return nil
}

type row struct {
	name string
	get  func(*result) float64
}

var loadRows = []row{
	{"deliveries/s", func(r *result) float64 { return r.DeliveriesPerSec }},
	{"lost deliveries", func(r *result) float64 { return float64(r.Lost) }},
	{"disconnects", func(r *result) float64 { return float64(r.Disconnects) }},
	{"latency p50 (ms)", func(r *result) float64 { return r.P50ms }},
	{"latency p99 (ms)", func(r *result) float64 { return r.P99ms }},
	{"latency max (ms)", func(r *result) float64 { return r.MaxMs }},
	{"server CPU (s)", func(r *result) float64 { return r.ServerCPUSeconds }},
	{"server CPU µs per delivery", func(r *result) float64 {
		if r.Delivered == 0 {
			return 0
		}
		return r.ServerCPUSeconds * 1e6 / float64(r.Delivered)
	}},
	{"server RSS (MiB)", func(r *result) float64 { return r.ServerRSSMiB }},
	{"frames per delivery", func(r *result) float64 {
		if r.Delivered == 0 {
			return 0
		}
		return float64(r.Frames) / float64(r.Delivered)
	}},
}

// modeOf is the mode of a scenario's runs.
func modeOf(ours, base []*result) string {
	if len(ours) > 0 {
		return ours[0].Mode
	}
	if len(base) > 0 {
		return base[0].Mode
	}
	return ""
}

var idleRows = []row{
	{"KiB per idle connection", func(r *result) float64 { return r.KiBPerConn }},
	{"server CPU to fill and hold (s)", func(r *result) float64 { return r.ServerCPUSeconds }},
	{"server RSS held (MiB)", func(r *result) float64 { return r.RSSAfterMiB }},
	{"dropped", func(r *result) float64 { return float64(r.Disconnects) }},
}

var stormRows = []row{
	{"reader evictions", func(r *result) float64 { return float64(r.Disconnects) }},
	{"reader lost messages", func(r *result) float64 { return float64(r.Lost) }},
	{"joins and leaves", func(r *result) float64 { return float64(r.Joins) }},
	{"reader latency p99 (ms)", func(r *result) float64 { return r.P99ms }},
	{"server CPU (s)", func(r *result) float64 { return r.ServerCPUSeconds }},
}

func median(rs []*result, get func(*result) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = get(r)
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func fmtNum(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 1000 || v <= -1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
