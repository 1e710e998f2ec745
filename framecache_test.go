package chatroom

import (
	"runtime"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// TestFrameCacheSharesAndForgets: every replay of an event gets the same
// frame, with the bytes the live delivery sends; once the event is gone
// its frame is dropped.
func TestFrameCacheSharesAndForgets(t *testing.T) {
	var fc frameCache
	ev := chat.NewChat(chat.Member{ID: "7", Nick: "alice"}, "hello", time.Unix(1456690889, 0))
	ev.Seq = 4711
	first, second := fc.frame(ev), fc.frame(ev)
	if first != second {
		t.Fatal("two replays of one event got two frames")
	}
	if got, want := string(first.Payload()), string(encodeFrame(ev)); got != want {
		t.Fatalf("cached frame %s, want %s", got, want)
	}
	other := &chat.Event{Kind: chat.KindChat, ID: "8", Msg: "other", Seq: 4712}
	if fc.frame(other) == first {
		t.Fatal("two events share a frame")
	}
	runtime.KeepAlive(ev)
	runtime.KeepAlive(other)

	// Cleanups run after a collection finds the events unreachable; they
	// run on their own goroutine, so the wait is bounded polling.
	deadline := time.Now().Add(waitLong)
	for fc.len() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d frames still cached after their events are gone", fc.len())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}
