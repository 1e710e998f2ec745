package testenv

import (
	"strings"
	"testing"
)

// TestMemcachedRestart checks the memcached side itself: keys are listed
// and read, a restart on the same port loses them.
func TestMemcachedRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	m := StartMemcached(t)
	m.Set("harness:a", "1", 0)
	m.Set("other:b", "2", 0)
	m.Set("empty", "", 0)
	if got := m.Keys(); len(got) != 3 || got[0] != "empty" || got[1] != "harness:a" || got[2] != "other:b" {
		t.Fatalf("keys = %q, want [empty harness:a other:b]", got)
	}
	if v := m.Get("harness:a"); v != "1" {
		t.Fatalf("get harness:a = %q, want 1", v)
	}
	if n := m.Incr("harness:a", 41); n != 42 || m.Get("harness:a") != "42" {
		t.Fatalf("incr harness:a by 41 = %d, value %q; want 42", n, m.Get("harness:a"))
	}
	if !m.Has("empty") || m.Get("empty") != "" || m.Has("missing") {
		t.Fatal("an empty value must be held and a missing key not")
	}
	m.Stop()
	if _, err := m.Command("version"); err == nil {
		t.Fatal("memcached still answers after Stop")
	}
	m.Start()
	if got := m.Keys(); len(got) != 0 {
		t.Fatalf("keys after restart = %q, want none", got)
	}
	if m.Has("harness:a") {
		t.Fatal("harness:a survived a restart")
	}
	if stats := m.Stats(); stats["pid"] == 0 {
		t.Fatalf("stats has no pid: %v", stats)
	}
}

func TestParseMetrics(t *testing.T) {
	in := "# HELP x help\n# TYPE x counter\nx 3\ny{reason=\"a b\"} 1.5\nbad line\nnonumber abc\n\n"
	got, err := ParseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["x"] != 3 || got[`y{reason="a b"}`] != 1.5 {
		t.Fatalf("ParseMetrics = %v", got)
	}
	if _, err := ParseMetrics(strings.NewReader("x " + strings.Repeat("1", 2<<20) + "\n")); err == nil {
		t.Fatal("a 2 MiB line was read without an error")
	}
}

// TestFreePortNeverRepeats: two servers of one test must not share a port,
// which Caddy's SO_REUSEPORT listeners would allow without an error.
func TestFreePortNeverRepeats(t *testing.T) {
	seen := map[int]bool{}
	for i := range 200 {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("call %d returned port %d again", i+1, port)
		}
		seen[port] = true
	}
}
