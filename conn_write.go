package chatroom

import (
	"errors"
	"fmt"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/gorilla/websocket"
)

// The write side of a connection: a bounded send queue that never blocks
// the sender (a client whose queue is full is closed as a slow consumer),
// presence frames merged in it instead of counted, and a writer goroutine
// that runs only while something is queued and writes the whole queue in
// one system call.

// sendFrame queues a frame for this connection alone.
func (c *conn) sendFrame(frame []byte) { c.send(wsio.NewTextFrame(frame)) }

// send queues a frame without ever blocking: a client whose queue is full is
// too slow to keep up and is closed, so that it never slows the others.
func (c *conn) send(pm *wsio.Frame) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	if c.chatWaiting() >= c.opts.sendQueue {
		c.closing = true
		c.mu.Unlock()
		go c.finishClose(websocket.ClosePolicyViolation, fmt.Sprintf("too slow: more than %d frames waiting", c.opts.sendQueue), dropSlowConsumer)
		return
	}
	c.queue = append(c.queue, pm)
	c.wakeWriter()
	c.mu.Unlock()
}

// wakeWriter starts a writer goroutine unless one runs. The caller holds
// c.mu.
func (c *conn) wakeWriter() {
	if !c.writing {
		c.writing = true
		go c.writeLoopFn()
	}
}

// writeLoop writes queued frames until the queue is empty, then exits.
func (c *conn) writeLoop() {
	for {
		c.mu.Lock()
		batch, ping := c.queue, c.pingDue
		if len(batch) == 0 && !ping || c.closing {
			c.writing = false
			c.mu.Unlock()
			return
		}
		c.queue, c.spare = c.spare[:0], nil
		c.presence.taken()
		c.pingDue = false
		feed := c.replay // its mark is in batch
		c.replay = nil
		c.mu.Unlock()

		var err error
		if feed != nil {
			err = c.writeWithReplay(batch, ping, feed)
		} else {
			err = c.writeBatch(batch, ping)
		}
		clear(batch)
		c.mu.Lock()
		c.spare = batch[:0]
		c.mu.Unlock()
		if err != nil {
			// ErrCloseSent: the client closed first and gorilla answered
			// it; the reader ends the connection, and it is no drop.
			if !errors.Is(err, websocket.ErrCloseSent) {
				c.closeWith(websocket.CloseGoingAway, "write failed", dropWriteError)
			}
			return
		}
	}
}

// writeBatch writes a batch of frames, and a ping if one is due, in as few
// system calls as the batch's size allows (see internal/wsio).
func (c *conn) writeBatch(batch []*wsio.Frame, ping bool) error {
	err := c.wc.WriteFrames(batch, ping)
	if err == nil {
		c.hub.metrics.delivered.Add(float64(len(batch)))
	}
	return err
}

func (c *conn) startPinging() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	c.pingTimer = time.AfterFunc(c.opts.pingInterval, c.pingTick)
}

func (c *conn) pingTick() {
	// A parked connection has no read deadline: silence is checked here.
	if c.silentFor() > 2*c.opts.pingInterval {
		c.closeWith(websocket.CloseGoingAway, "no pong or frame for two ping intervals", dropIdle)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	c.pingDue = true
	c.wakeWriter()
	c.pingTimer.Reset(c.opts.pingInterval)
}

func (c *conn) stopPinging() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pingTimer != nil {
		c.pingTimer.Stop()
	}
}

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
