package chatroom

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/gorilla/websocket"
)

// Resume: every chat frame carries the event's seq, and a client that
// reconnects names the last one it got with `since` in the WebSocket URL's
// query. It is then sent, in place of the history, the chat events of the
// room after that seq which are still held, and a `resumed` frame that says
// how many there were and whether they are all (see the README).

// resumeRequest is what a connection asked for with `since`.
type resumeRequest struct {
	asked bool   // the URL had a since parameter
	valid bool   // and it names a seq this server could have handed out
	after uint64 // the seq, when valid
}

// parseSince reads the `since` parameter of a WebSocket URL's query. It
// never fails: a value that is not a decimal seq, or one from the future,
// is a request that cannot be served (the client gets the normal join and
// is told so).
func parseSince(rawQuery string, now time.Time) resumeRequest {
	q, _ := url.ParseQuery(rawQuery) // a bad pair elsewhere must not hide since
	if !q.Has("since") {
		return resumeRequest{}
	}
	req := resumeRequest{asked: true}
	after, err := strconv.ParseUint(q.Get("since"), 10, 64)
	if err != nil || after > uint64(max(now.Add(maxSinceAhead).UnixMicro(), 0)) {
		return req
	}
	req.valid, req.after = true, after
	return req
}

// replayChunkBytes bounds one write of a replay: a replay is written in
// chunks of at most this many bytes, each within wsio.WriteWait, so that a
// client that reads slowly but steadily (25 KiB/s and up) gets all of it,
// and one that reads nothing is closed after WriteWait like any slow
// consumer. It is also the largest replay that needs no replay slot.
const replayChunkBytes = 256 << 10

// maxReplays bounds the replays larger than replayChunkBytes that one
// instance has in progress at once; a resume past it is closed with 1013
// before it joins, and the client comes back with the same since.
const maxReplays = 128

// errReplaysBusy refuses a resume while maxReplays are in progress.
var errReplaysBusy = errors.New("too many resumes in progress; reconnect later with the same since")

// replaySlots counts the replays in progress on a hub.
type replaySlots struct{ n atomic.Int64 }

// take takes a slot, if one is free.
func (s *replaySlots) take() bool {
	if s.n.Add(1) > maxReplays {
		s.n.Add(-1)
		return false
	}
	return true
}

// give gives a slot back.
func (s *replaySlots) give() { s.n.Add(-1) }

// replayFeed is a resume's replay in a connection's send queue: one entry
// of the queue (mark) stands for all its frames, which the writer sends in
// chunks when it reaches it (see writeReplay). The frames are the events'
// shared frames (framecache.go): a replay costs the connection a slice of
// pointers, not a copy of the room, and it does not raise send_queue. Live
// frames queue behind it and count against send_queue as ever.
type replayFeed struct {
	mark   *wsio.Frame   // the queue entry; never written
	frames []*wsio.Frame // the missed chat frames, then the resumed frame
	// done gives the replay slot back, once; it runs when the replay is
	// written or the connection ends first.
	done func()
}

// pastFor works out the replay of a client that resumes, before it joins r:
// nil for a client that does not (it gets the history, see replay). A
// replay larger than one chunk takes a replay slot, and when none is free
// the client is refused with errReplaysBusy. The caller holds r.mu, so that
// nothing said meanwhile is lost or doubled between the replay and the live
// frames.
func (h *hub) pastFor(r *room, c *conn) (*replayFeed, error) {
	rs := c.opts.resume
	if !rs.valid {
		return nil, nil
	}
	events, complete := h.reg.Since(r.name, rs.after)
	feed := &replayFeed{mark: new(wsio.Frame), frames: make([]*wsio.Frame, 0, len(events)+1), done: func() {}}
	size := 0
	for _, ev := range events {
		f := h.frames.frame(ev)
		size += f.Len()
		feed.frames = append(feed.frames, f)
	}
	feed.frames = append(feed.frames, wsio.NewTextFrame(resumedMessage(len(events), complete)))
	if size > replayChunkBytes {
		if !h.replays.take() {
			return nil, errReplaysBusy
		}
		feed.done = sync.OnceFunc(h.replays.give)
	}
	return feed, nil
}

// replay queues for c, after its welcome and online frames, the room's
// past: feed, the replay pastFor made, when c resumes; else the last
// `history` events, which the handler's send_queue allows for. The caller
// holds r.mu.
func (h *hub) replay(r *room, c *conn, feed *replayFeed) {
	if feed != nil {
		c.sendReplay(feed)
		return
	}
	if c.opts.history > 0 {
		for _, ev := range h.reg.History(r.name, c.opts.history) {
			c.send(h.frames.frame(ev))
		}
	}
	if c.opts.resume.asked {
		c.sendFrame(resumedMessage(0, false))
	}
}

// sendReplay queues a replay, as one entry.
func (c *conn) sendReplay(feed *replayFeed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		feed.done()
		return
	}
	c.replay = feed
	c.queue = append(c.queue, feed.mark)
	c.wakeWriter()
}

// hasReplay reports whether a replay waits for the writer.
func (c *conn) hasReplay() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.replay != nil
}

// dropReplay gives back the slot of a replay the writer never took: the
// connection ended first.
func (c *conn) dropReplay() {
	c.mu.Lock()
	feed := c.replay
	c.replay = nil
	c.mu.Unlock()
	if feed != nil {
		feed.done()
	}
}

// writeWithReplay writes a batch that holds feed's mark: the frames before
// it, the replay, then the rest and the ping.
func (c *conn) writeWithReplay(batch []*wsio.Frame, ping bool, feed *replayFeed) error {
	defer feed.done()
	i := slices.Index(batch, feed.mark)
	if i < 0 { // cannot happen: sendReplay queues the mark with the feed
		return c.writeBatch(batch, ping)
	}
	if err := c.writeBatch(batch[:i], false); err != nil {
		return err
	}
	if err := c.writeReplay(feed); err != nil {
		return err
	}
	return c.writeBatch(batch[i+1:], ping)
}

// writeReplay writes a replay's frames in chunks of at most
// replayChunkBytes, each within wsio.WriteWait. A client that does not take
// a chunk in that time is a slow consumer, and is closed as one. The frames
// are let go as they are written. A ping that falls due meanwhile goes out
// with the next chunk: a client reading a long replay slowly answers it,
// and is not taken for idle.
func (c *conn) writeReplay(feed *replayFeed) error {
	for len(feed.frames) > 0 {
		n, size := 0, 0
		for n < len(feed.frames) && (n == 0 || size+feed.frames[n].Len() <= replayChunkBytes) {
			size += feed.frames[n].Len()
			n++
		}
		c.mu.Lock()
		ping := c.pingDue
		c.pingDue = false
		c.mu.Unlock()
		if err := c.writeBatch(feed.frames[:n], ping); err != nil {
			var netErr interface{ Timeout() bool }
			if errors.As(err, &netErr) && netErr.Timeout() {
				c.closeWith(websocket.ClosePolicyViolation, fmt.Sprintf("too slow: a part of the replay was not read within %v", wsio.WriteWait), dropSlowConsumer)
			}
			return err
		}
		clear(feed.frames[:n])
		feed.frames = feed.frames[n:]
	}
	return nil
}
