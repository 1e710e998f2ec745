package chatroom

import "github.com/caddy-chatroom/chatroom/internal/wsio"

// presenceKind says how a presence frame merges with the presence frames
// already waiting in a member's queue.
type presenceKind uint8

const (
	// presenceEvent is a join, leave or nick event: it waits in line, up
	// to maxWaitingPresence of them, then they collapse into one fresh
	// online frame.
	presenceEvent presenceKind = iota
	// presenceCount is a big room's count: it replaces the count frame
	// still waiting, if any.
	presenceCount
	// presenceOnline is a whole online list: it supersedes every presence
	// frame still waiting.
	presenceOnline
)

// maxWaitingPresence bounds the presence events waiting in one member's
// queue. They do not count against send_queue: a member that keeps reading
// is never closed because others join and leave quickly, and a member that
// stops reading is held to send_queue by the chat frames, and to this bound
// by presence.
const maxWaitingPresence = 64

// waitingPresence tracks the presence frames in a conn's queue, so that a
// new one can merge with them. Guarded by conn.mu.
type waitingPresence struct {
	at    []int32 // positions in the queue, ascending
	count int     // position+1 of the waiting count frame; 0 when none
}

// taken forgets the waiting frames: the writer has taken the queue.
func (w *waitingPresence) taken() {
	w.at = w.at[:0]
	w.count = 0
}

// sendPresence queues a presence frame, merging it with the presence frames
// that wait: a count replaces the waiting count, an online list drops every
// waiting presence frame, and an event beyond maxWaitingPresence drops them
// all for one online frame from refresh (which describes the room with this
// event in it). Presence never makes a member a slow consumer.
func (c *conn) sendPresence(pm *wsio.Frame, kind presenceKind, refresh func() *wsio.Frame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	switch kind {
	case presenceCount:
		if c.presence.count > 0 {
			c.queue[c.presence.count-1] = pm
			return
		}
	case presenceOnline:
		c.dropPresence()
	case presenceEvent:
		if len(c.presence.at) >= maxWaitingPresence && refresh != nil {
			c.dropPresence()
			pm, kind = refresh(), presenceOnline
			if pm == nil {
				return
			}
		}
	}
	pos := len(c.queue)
	c.queue = append(c.queue, pm)
	c.presence.at = append(c.presence.at, int32(pos))
	if kind == presenceCount {
		c.presence.count = pos + 1
	}
	c.wakeWriter()
}

// dropPresence removes the waiting presence frames from the queue, keeping
// the others in order. The caller holds c.mu.
func (c *conn) dropPresence() {
	if len(c.presence.at) == 0 {
		return
	}
	kept, j := 0, 0
	for i, pm := range c.queue {
		if j < len(c.presence.at) && int(c.presence.at[j]) == i {
			j++
			continue
		}
		c.queue[kept] = pm
		kept++
	}
	clear(c.queue[kept:])
	c.queue = c.queue[:kept]
	c.presence.taken()
}

// chatWaiting is how many frames wait that count against send_queue. The
// caller holds c.mu.
func (c *conn) chatWaiting() int {
	return len(c.queue) - len(c.presence.at)
}
