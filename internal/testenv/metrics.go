package testenv

import (
	"bufio"
	"io"
	"strconv"
	"strings"
)

// ParseMetrics reads the Prometheus text format and returns every sample by
// its series text (name plus labels, as printed). Comments and lines
// without a number are skipped; a line longer than 1 MiB is an error.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	samples := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			samples[line[:i]] = v
		}
	}
	return samples, sc.Err()
}
