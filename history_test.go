package chatroom

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

func chatEvent(msg string) *chat.Event {
	return &chat.Event{Kind: chat.KindChat, ID: "1", Msg: msg, Time: "1"}
}

func msgs(events []*chat.Event) string {
	var b strings.Builder
	for i, ev := range events {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(ev.Msg)
	}
	return b.String()
}

func TestRoomHistoryStampsRisingSeqs(t *testing.T) {
	h := newRoomHistory("r")
	now := time.UnixMicro(1_000_000)
	a, b := chatEvent("a"), chatEvent("b")
	h.add(a, now, 0, time.Minute)
	if a.Seq != 1_000_000 {
		t.Fatalf("first seq = %d, want the time in µs, 1000000", a.Seq)
	}
	// The same microsecond, and then a clock that steps back: still rising.
	h.add(b, now, 0, time.Minute)
	c := chatEvent("c")
	h.add(c, now.Add(-time.Second), 0, time.Minute)
	if b.Seq != a.Seq+1 || c.Seq != b.Seq+1 {
		t.Fatalf("seqs = %d %d %d, want each one more than the last", a.Seq, b.Seq, c.Seq)
	}
	// An event from another instance keeps its seq and raises the last.
	remote := chatEvent("remote")
	remote.Seq = 5_000_000
	h.add(remote, now, 0, time.Minute)
	if remote.Seq != 5_000_000 || h.last != 5_000_000 {
		t.Fatalf("remote seq = %d, last = %d; want 5000000 kept and last raised", remote.Seq, h.last)
	}
	d := chatEvent("d")
	h.add(d, now, 0, time.Minute)
	if d.Seq != 5_000_001 {
		t.Fatalf("seq after a remote one = %d, want 5000001", d.Seq)
	}
	// A remote event from a clock behind ours is kept without lowering last.
	late := chatEvent("late")
	late.Seq = 2_000_000
	h.add(late, now, 0, time.Minute)
	if h.last != 5_000_001 {
		t.Fatalf("last = %d after an older remote seq, want 5000001", h.last)
	}
	// A forged seq from shared storage is clamped to a minute ahead.
	forged := chatEvent("forged")
	forged.Seq = 1<<64 - 1
	h.add(forged, now, 0, time.Minute)
	if want := uint64(now.Add(maxSinceAhead).UnixMicro()); forged.Seq != want || h.last != want {
		t.Fatalf("forged seq became %d (last %d), want %d", forged.Seq, h.last, want)
	}
	e := chatEvent("e")
	h.add(e, now, 0, time.Minute)
	if e.Seq != h.last || e.Seq <= forged.Seq {
		t.Fatalf("seq after a clamped one = %d, want it above %d", e.Seq, forged.Seq)
	}
}

func TestRoomHistorySince(t *testing.T) {
	h := newRoomHistory("r")
	now := time.UnixMicro(1_000_000)
	var seqs []uint64
	for i := 0; i < 5; i++ {
		ev := chatEvent(fmt.Sprintf("m%d", i))
		h.add(ev, now, 0, time.Minute)
		seqs = append(seqs, ev.Seq)
	}
	tests := []struct {
		name         string
		after        uint64
		want         string
		wantComplete bool
	}{
		{"after the second", seqs[1], "m2 m3 m4", true},
		{"after the last", seqs[4], "", true},
		{"just before the first", seqs[0] - 1, "m0 m1 m2 m3 m4", true},
		{"long before the first", seqs[0] - 100, "m0 m1 m2 m3 m4", false},
		{"from the future", seqs[4] + 1, "", false},
		{"zero", 0, "m0 m1 m2 m3 m4", false},
	}
	for _, tt := range tests {
		events, complete := h.since(tt.after)
		if got := msgs(events); got != tt.want || complete != tt.wantComplete {
			t.Errorf("%s: since(%d) = %q, complete %v; want %q, %v", tt.name, tt.after, got, complete, tt.want, tt.wantComplete)
		}
	}
	// A gap (a relay lost what was said after the last seq) makes older
	// resumes incomplete, until events after it arrive.
	h.markGap(0)
	if events, complete := h.since(seqs[4]); complete || len(events) != 0 {
		t.Errorf("since the last seq after a gap = %q, complete %v; want nothing, incomplete", msgs(events), complete)
	}
	after := chatEvent("after gap")
	h.add(after, time.UnixMicro(2_000_001), 0, time.Minute)
	if events, complete := h.since(after.Seq); !complete || len(events) != 0 {
		t.Errorf("since a seq after the gap = %q, complete %v; want nothing, complete", msgs(events), complete)
	}
}

func TestRoomHistoryBounds(t *testing.T) {
	start := time.UnixMicro(1_000_000)
	window := 2 * time.Minute

	// Within the window, the count is bounded by maxHeldEvents.
	h := newRoomHistory("r")
	var first, cut *chat.Event
	for i := 0; i < maxHeldEvents+50; i++ {
		ev := chatEvent(fmt.Sprint(i))
		h.add(ev, start, 0, window)
		if i == 0 {
			first = ev
		}
		if i == 49 {
			cut = ev
		}
	}
	if n := h.held(); n != maxHeldEvents {
		t.Fatalf("held %d events, want at most %d", n, maxHeldEvents)
	}
	if len(h.events) > 2*maxHeldEvents {
		t.Fatalf("array of %d for %d events: the dropped front is not reused", len(h.events), h.held())
	}
	if got := h.latest(1)[0].Msg; got != fmt.Sprint(maxHeldEvents+49) {
		t.Fatalf("latest = %s, want the last added", got)
	}
	if _, complete := h.since(first.Seq); complete {
		t.Error("since an event that was dropped: complete, want incomplete")
	}
	if events, complete := h.since(cut.Seq); !complete || len(events) != maxHeldEvents {
		t.Errorf("since the last dropped event: %d events, complete %v; want %d, complete", len(events), complete, maxHeldEvents)
	}

	// Beyond the window, only the last keep stay.
	h = newRoomHistory("r")
	var seqs []uint64
	for i := 0; i < 10; i++ {
		ev := chatEvent(fmt.Sprintf("m%d", i))
		h.add(ev, start.Add(time.Duration(i)*time.Second), 3, window)
		seqs = append(seqs, ev.Seq)
	}
	h.prune(start.Add(window+5*time.Second+time.Millisecond), 3, window)
	if got := msgs(h.latest(100)); got != "m6 m7 m8 m9" {
		t.Fatalf("held after the window passed = %q, want m6 to m9 (within the window, and more than keep 3)", got)
	}
	h.prune(start.Add(time.Hour), 3, window)
	if got := msgs(h.latest(100)); got != "m7 m8 m9" {
		t.Fatalf("held long after = %q, want the last 3 (keep)", got)
	}
	if events, complete := h.since(seqs[0]); complete || msgs(events) != "m7 m8 m9" {
		t.Errorf("since m0 = %q, complete %v; want m7 to m9, incomplete", msgs(events), complete)
	}
	if _, complete := h.since(seqs[6]); !complete {
		t.Error("since m6, the last dropped: incomplete, want complete")
	}
}

func TestEmbeddedRegistrySince(t *testing.T) {
	r := newEmbeddedRegistry()
	if events, complete := r.Since("lobby", 1); events != nil || complete {
		t.Fatalf("Since on an unknown room = %v, %v; want nothing, incomplete", events, complete)
	}
	// Without history, chat events are still held for resumes.
	a, b := chatEvent("a"), chatEvent("b")
	r.Publish("lobby", a)
	r.Publish("lobby", &chat.Event{Kind: chat.KindJoin, ID: "2"})
	r.Publish("lobby", b)
	if a.Seq == 0 || b.Seq <= a.Seq {
		t.Fatalf("seqs %d, %d: want stamped and rising", a.Seq, b.Seq)
	}
	if events, complete := r.Since("lobby", a.Seq); msgs(events) != "b" || !complete {
		t.Fatalf("Since(a) = %q, %v; want b, complete", msgs(events), complete)
	}
	if events := r.History("lobby", 5); msgs(events) != "a b" {
		t.Fatalf("History = %q, want a b", msgs(events))
	}
	if events, _ := r.Since("other", 0); events != nil {
		t.Fatalf("another room's Since = %q, want nothing", msgs(events))
	}
	// The window is the longest asked for.
	r.KeepWindow(time.Second)
	r.KeepWindow(time.Minute)
	r.KeepWindow(time.Second)
	if w := r.Window(); w != time.Minute {
		t.Fatalf("window = %v, want 1m, the longest asked for", w)
	}
}

func TestParseSince(t *testing.T) {
	now := time.UnixMicro(1_800_000_000_000_000)
	tests := []struct {
		query string
		want  resumeRequest
	}{
		{"", resumeRequest{}},
		{"room=a", resumeRequest{}},
		{"since=1799999999000000", resumeRequest{asked: true, valid: true, after: 1_799_999_999_000_000}},
		{"room=a&since=42", resumeRequest{asked: true, valid: true, after: 42}},
		{"since=0", resumeRequest{asked: true, valid: true}},
		{"since=", resumeRequest{asked: true}},
		{"since=abc", resumeRequest{asked: true}},
		{"since=-5", resumeRequest{asked: true}},
		{"since=1.5", resumeRequest{asked: true}},
		{"since=+7", resumeRequest{asked: true}},
		{"since=99999999999999999999999", resumeRequest{asked: true}},
		{"since=1800000100000000", resumeRequest{asked: true}}, // 100 s ahead
		{"since=1800000030000000", resumeRequest{asked: true, valid: true, after: 1_800_000_030_000_000}},
		{"x=%zz&since=9", resumeRequest{asked: true, valid: true, after: 9}},
	}
	for _, tt := range tests {
		if got := parseSince(tt.query, now); got != tt.want {
			t.Errorf("parseSince(%q) = %+v, want %+v", tt.query, got, tt.want)
		}
	}
}

func TestResumedAndChatFrames(t *testing.T) {
	if got, want := string(resumedMessage(3, true)), `{"msg":"resumed: 3 missed messages","msg_source":"server","event":"resumed","missed":"3","complete":true}`; got != want {
		t.Errorf("resumed frame = %s, want %s", got, want)
	}
	if got := string(resumedMessage(0, false)); !strings.Contains(got, `"missed":"0","complete":false`) {
		t.Errorf("incomplete resumed frame = %s", got)
	}
	ev := &chat.Event{Kind: chat.KindChat, ID: "12", Msg: "hi", Time: "1456690889", Seq: 4711, Nick: "alice"}
	if got, want := string(encodeFrame(ev)), `{"from_id":"12","msg":"hi","msg_time":"1456690889","seq":"4711","from_nick":"alice"}`; got != want {
		t.Errorf("chat frame = %s, want %s", got, want)
	}
}

// BenchmarkRoomHistoryAdd: recording one chat event in a full ring (the
// cost Publish adds to every chat message, under the room's lock).
func BenchmarkRoomHistoryAdd(b *testing.B) {
	h := newRoomHistory("r")
	now := time.Now()
	for range maxHeldEvents {
		h.add(chatEvent("x"), now, 0, time.Hour)
	}
	events := make([]chat.Event, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ev := &events[i%len(events)]
		*ev = chat.Event{Kind: chat.KindChat, ID: "1", Msg: "x"}
		h.add(ev, now, 0, time.Hour)
	}
}

// BenchmarkRoomHistorySince: a resume that misses half of a full ring.
func BenchmarkRoomHistorySince(b *testing.B) {
	h := newRoomHistory("r")
	now := time.Now()
	var mid uint64
	for i := range maxHeldEvents {
		ev := chatEvent("x")
		h.add(ev, now, 0, time.Hour)
		if i == maxHeldEvents/2 {
			mid = ev.Seq
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if events, _ := h.since(mid); len(events) != maxHeldEvents/2-1 {
			b.Fatalf("since returned %d events", len(events))
		}
	}
}
