package chatroom

import (
	"runtime"
	"sync"
	"weak"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/wsio"
)

// frameCache holds the encoded frame of each held chat event that has been
// replayed (a resume or a joiner's history), for as long as the event
// lives: every connection replaying an event writes the same bytes, so that
// a hundred clients resuming over the same thousand messages cost one
// encoding of each, not a hundred. An event is immutable once its room's
// history holds it, which is where replays read it from.
//
// Keys are weak: the cache never keeps an event alive. When the history
// drops an event and no replay still holds it, a cleanup removes its frame.
// Frames made for live delivery are not cached: each is made once anyway,
// and caching them would double what every room's history costs.
type frameCache struct {
	mu     sync.Mutex
	frames map[weak.Pointer[chat.Event]]*wsio.Frame
}

// frame returns the frame of ev, encoding it on first use.
func (fc *frameCache) frame(ev *chat.Event) *wsio.Frame {
	key := weak.Make(ev)
	fc.mu.Lock()
	f, ok := fc.frames[key]
	fc.mu.Unlock()
	if ok {
		return f
	}
	f = wsio.NewTextFrame(encodeFrame(ev))
	fc.mu.Lock()
	if have, ok := fc.frames[key]; ok {
		fc.mu.Unlock()
		return have
	}
	if fc.frames == nil {
		fc.frames = make(map[weak.Pointer[chat.Event]]*wsio.Frame)
	}
	fc.frames[key] = f
	fc.mu.Unlock()
	runtime.AddCleanup(ev, fc.forget, key)
	return f
}

// forget drops the frame of an event that is gone.
func (fc *frameCache) forget(key weak.Pointer[chat.Event]) {
	fc.mu.Lock()
	delete(fc.frames, key)
	fc.mu.Unlock()
}

// len is how many frames the cache holds.
func (fc *frameCache) len() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return len(fc.frames)
}
