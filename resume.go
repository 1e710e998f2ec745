package chatroom

import (
	"net/url"
	"strconv"
	"time"
)

// Resume: every chat frame carries the event's seq, and a client that
// reconnects names the last one it got with `since` in the WebSocket URL's
// query. It is then sent, in place of the history, the chat events of the
// room after that seq which are still held, and a `resumed` frame that says
// how many there were and whether they are all (see the README).

// maxSinceAhead is how far ahead of this instance's clock a `since` may be
// before it counts as from the future: seqs are times in microseconds, and
// instances' clocks differ a little.
const maxSinceAhead = time.Minute

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

// replay sends c, after its welcome and online frames, the room's past: the
// events it missed when it resumes, else the last `history` ones. The
// caller holds r.mu, so that nothing said meanwhile is lost or doubled
// between the replay and the live frames.
func (h *hub) replay(r *room, c *conn) {
	if rs := c.opts.resume; rs.valid {
		events, complete := h.reg.Since(r.name, rs.after)
		c.allowBurst(len(events) - c.opts.history)
		for _, ev := range events {
			c.sendFrame(encodeFrame(ev))
		}
		c.sendFrame(resumedMessage(len(events), complete))
		return
	}
	if c.opts.history > 0 {
		for _, ev := range h.reg.History(r.name, c.opts.history) {
			c.sendFrame(encodeFrame(ev))
		}
	}
	if c.opts.resume.asked {
		c.sendFrame(resumedMessage(0, false))
	}
}

// allowBurst lets the send queue hold n more frames: a replay on joining is
// not slowness. Before the join, the handler's allowance covers the
// history.
func (c *conn) allowBurst(n int) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	c.opts.sendQueue += n
	c.mu.Unlock()
}

// resumedFrame ends a resume.
type resumedFrame struct {
	Msg       string `json:"msg"`
	MsgSource string `json:"msg_source"`
	Event     string `json:"event"`
	Missed    string `json:"missed"`
	Complete  bool   `json:"complete"`
}

func resumedMessage(missed int, complete bool) []byte {
	text := "resumed: " + strconv.Itoa(missed) + " missed messages"
	if !complete {
		text += "; older ones are no longer available"
	}
	return mustMarshal(resumedFrame{Msg: text, MsgSource: sourceServer, Event: "resumed", Missed: strconv.Itoa(missed), Complete: complete})
}

// seqString is the frame's spelling of a seq; none for 0 (no seq).
func seqString(seq uint64) string {
	if seq == 0 {
		return ""
	}
	return strconv.FormatUint(seq, 10)
}
