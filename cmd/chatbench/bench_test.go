package main

import (
	"testing"
	"time"
)

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}} {
		got := h.quantile(c.q)
		if got < c.want*93/100 || got > c.want*107/100 {
			t.Errorf("quantile(%v) = %v, want %v within 7%%", c.q, got, c.want)
		}
	}
	if h.max != time.Second {
		t.Errorf("max = %v, want 1s", h.max)
	}
}

func TestTextRoundTrip(t *testing.T) {
	text := makeText(nil, 7, 123456, 987654321, 64)
	if len(text) != 64 {
		t.Fatalf("len = %d, want 64", len(text))
	}
	s, seq, ts, err := parseText(text)
	if err != nil || s != 7 || seq != 123456 || ts != 987654321 {
		t.Fatalf("parseText = %d %d %d %v", s, seq, ts, err)
	}
	if _, _, _, err := parseText([]byte("hello world")); err == nil {
		t.Fatal("parseText accepted a foreign message")
	}
}

func TestProtocolsFindTexts(t *testing.T) {
	var got []string
	collect := func(b []byte) { got = append(got, string(b)) }
	protocols["ours"].each([]byte(`{"from_id":"3","msg":"1 2 3 xx","msg_time":"1"}`), collect)
	protocols["ours"].each([]byte(`{"msg":"4 joined","msg_source":"server","event":"join","id":"4"}`), collect)
	protocols["baseline"].each([]byte("a 1 2 x\nb 3 4 y"), collect)
	want := []string{"1 2 3 xx", "a 1 2 x", "b 3 4 y"}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

func TestCheckLoopback(t *testing.T) {
	if _, err := checkLoopback("ws://127.0.0.1:1/ws"); err != nil {
		t.Errorf("loopback refused: %v", err)
	}
	if _, err := checkLoopback("ws://192.0.2.1:1/ws"); err == nil {
		t.Error("non-loopback address accepted")
	}
}
