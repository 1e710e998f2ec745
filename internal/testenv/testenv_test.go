package testenv

import (
	"strings"
	"testing"
)

// TestMemcached checks the memcached side itself: keys are listed, a
// restart on the same port loses them.
func TestMemcached(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	m := StartMemcached(t)
	for k, v := range map[string]string{"harness:a": "1", "other:b": "2"} {
		if err := m.Set(k, v, 0); err != nil {
			t.Fatal(err)
		}
	}
	got, err := m.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != "harness:a" || got[1] != "other:b" {
		t.Fatalf("keys = %q, want [harness:a other:b]", got)
	}
	if v, ok, err := m.Get("harness:a"); err != nil || !ok || v != "1" {
		t.Fatalf("get harness:a = %q %v %v, want 1", v, ok, err)
	}
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Command("version"); err == nil {
		t.Fatal("memcached still answers after Stop")
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Keys(); err != nil || len(got) != 0 {
		t.Fatalf("keys after restart = %q %v, want none", got, err)
	}
	if _, ok, err := m.Get("harness:a"); err != nil || ok {
		t.Fatalf("get harness:a after restart: present %v, %v", ok, err)
	}
	stats, err := m.Stats()
	if err != nil || stats["pid"] == 0 {
		t.Fatalf("stats has no pid: %v %v", stats, err)
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
