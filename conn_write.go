package chatroom

import (
	"errors"
	"fmt"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/gorilla/websocket"
)

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
