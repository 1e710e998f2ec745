package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// runClusterTable prints the medians of `chatbench cluster` results by
// scenario, instance count and figure, one column per label (before,
// after), with the number of runs behind each median.
func runClusterTable(files []string) error {
	type key struct {
		scenario  string
		instances int
		figure    string
	}
	values := make(map[key]map[string][]float64)
	labels := make(map[string]bool)
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var r clusterResult
			if json.Unmarshal(sc.Bytes(), &r) != nil {
				continue
			}
			labels[r.Label] = true
			for fig, v := range r.Figures {
				k := key{r.Scenario, r.Instances, fig}
				if values[k] == nil {
					values[k] = make(map[string][]float64)
				}
				values[k][r.Label] = append(values[k][r.Label], v)
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return err
		}
	}
	var cols []string
	for l := range labels {
		cols = append(cols, l)
	}
	sort.Strings(cols)
	keys := make([]key, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.scenario != b.scenario {
			return a.scenario < b.scenario
		}
		if a.instances != b.instances {
			return a.instances < b.instances
		}
		return a.figure < b.figure
	})
	fmt.Printf("| scenario | instances | figure | %s |\n", strings.Join(cols, " | "))
	fmt.Printf("|---|---|---|%s\n", strings.Repeat("---|", len(cols)))
	for _, k := range keys {
		cells := make([]string, len(cols))
		for i, l := range cols {
			vs := values[k][l]
			if len(vs) == 0 {
				cells[i] = "not run"
				continue
			}
			sort.Float64s(vs)
			med := vs[len(vs)/2]
			if len(vs)%2 == 0 {
				med = (vs[len(vs)/2-1] + med) / 2
			}
			cells[i] = fmt.Sprintf("%s (%d)", fmtNum(med), len(vs))
		}
		fmt.Printf("| %s | %d | %s | %s |\n", k.scenario, k.instances, k.figure, strings.Join(cells, " | "))
	}
	return nil
}
