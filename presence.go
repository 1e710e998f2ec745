package chatroom

import (
	"sort"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/wsio"
)

// countInterval is the shortest time between two count (or refreshed
// online) frames of one big room: members of a busy room learn its size
// once a second, not once per join.
const countInterval = time.Second

// roomPresence is how a room shows who is in it. A room of at most limit
// members (across the cluster) shows full presence: a joiner gets the
// member list, the others get join, leave and nick events. A bigger room is
// "big": a joiner gets the count and at most limit members, and the members
// get a coalesced count frame at most once per countInterval while the
// count changes. Every field is guarded by the room's lock.
type roomPresence struct {
	limit int  // presence_limit of the handler that opened the room
	big   bool // counts instead of events

	timer     *time.Timer // the pending count tick; nil when none
	lastSent  time.Time   // when the last count or refresh went out
	lastCount int         // the count last sent; 0 after a refresh

	// view is the encoded member list of a big room's online frame, kept
	// while it stays true so that a join into a big room costs no list
	// building: a join leaves every listed member a member, a leave or a
	// rename may not. nil when it must be built again.
	view    []byte
	viewLen int // members in view
}

// total is how many members r has across the cluster: a count, which a
// cluster backend keeps exact even where it lists only some of another
// instance's members. The caller holds r.mu.
func (h *hub) total(r *room) int {
	return len(r.members) + h.reg.RemoteCount(r.name)
}

// onlineView returns at most r's limit members across the cluster, ordered
// by id, and how many members r has in all. The caller holds r.mu.
func (h *hub) onlineView(r *room) (list []chat.Member, total int) {
	return r.pick(h.reg.RemoteMembers(r.name)), h.total(r)
}

// pick lists at most r's limit members, local ones first, ordered by id:
// the work is bounded by the limit, not by the room's size. The caller
// holds r.mu.
func (r *room) pick(remote []chat.Member) []chat.Member {
	n := min(len(r.members)+len(remote), r.presence.limit)
	list := make([]chat.Member, 0, n)
	for _, c := range r.members {
		if len(list) == n {
			break
		}
		list = append(list, c.member)
	}
	for _, m := range remote {
		if len(list) == n {
			break
		}
		list = append(list, m)
	}
	sort.Slice(list, func(i, j int) bool { return chat.IDLess(list[i].ID, list[j].ID) })
	return list
}

// onlineFrame is the online frame of r as it is now: the whole list for a
// room within its limit, else the count and a bounded list, kept from one
// join to the next. The caller holds r.mu.
func (h *hub) onlineFrame(r *room) []byte {
	p := &r.presence
	total := h.total(r)
	if total <= p.limit {
		return onlineMessage(r.pick(h.reg.RemoteMembers(r.name)))
	}
	if p.view == nil {
		list := r.pick(h.reg.RemoteMembers(r.name))
		p.view, p.viewLen = mustMarshal(list), len(list)
	}
	return bigOnlineMessage(p.view, total)
}

// viewChanged drops r's kept member list when ev may have made it untrue
// (a leave or a rename), or when a join can fill it up. The caller holds
// r.mu.
func (r *room) viewChanged(ev *chat.Event) {
	if ev.Kind != chat.KindJoin || r.presence.viewLen < r.presence.limit {
		r.presence.view = nil
	}
}

// presenceShown reports whether a presence event of r, whose membership has
// just changed, goes to the members as an event. When it does not (r is
// big, or has just become big), a count tick is scheduled instead. The
// caller holds r.mu.
func (h *hub) presenceShown(r *room) bool {
	p := &r.presence
	if !p.big {
		if len(r.members) <= p.limit && h.total(r) <= p.limit {
			return true
		}
		p.big = true
		p.lastCount = 0
	}
	h.scheduleCount(r)
	return false
}

// scheduleCount makes sure a count tick of r is pending, no sooner than
// countInterval after the last one sent. The caller holds r.mu.
func (h *hub) scheduleCount(r *room) {
	p := &r.presence
	if p.timer != nil {
		return
	}
	wait := max(time.Until(p.lastSent.Add(countInterval)), 0)
	p.timer = time.AfterFunc(wait, func() { h.countTick(r) })
}

// countTick sends r's members its count when it has changed, or, when r
// has shrunk back within its limit, a fresh online list, after which they
// get events again.
func (h *hub) countTick(r *room) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := &r.presence
	p.timer = nil
	if r.dead || !p.big {
		return
	}
	list, total := h.onlineView(r)
	switch {
	case total <= p.limit:
		p.big = false
		p.lastCount = 0
		r.broadcastPresence(onlineMessage(list), presenceOnline, nil, nil)
	case total != p.lastCount:
		p.lastCount = total
		r.broadcastPresence(countMessage(total), presenceCount, nil, nil)
	default:
		return
	}
	p.lastSent = time.Now()
}

// stopCount stops r's pending count tick, when r dies. The caller holds
// r.mu.
func (r *room) stopCount() {
	if r.presence.timer != nil {
		r.presence.timer.Stop()
		r.presence.timer = nil
	}
}

// publishPresence fans a join, leave or nick event of a local member out to
// r's members, or schedules a count when r is big, and hands it to the
// registry either way. The caller holds r.mu.
func (h *hub) publishPresence(r *room, ev *chat.Event, sender *conn) {
	h.deliverLocal(r, ev, sender)
	h.reg.Publish(r.name, ev)
}

// deliverLocal fans ev out to r's local members but except, presence
// events as presenceShown says; a chat message goes to every member but its
// author, found by id in the broadcast's own loop. The caller holds r.mu.
func (h *hub) deliverLocal(r *room, ev *chat.Event, except *conn) {
	switch ev.Kind {
	case chat.KindJoin, chat.KindLeave, chat.KindNick:
		r.viewChanged(ev)
		if h.presenceShown(r) {
			r.broadcastPresence(encodeFrame(ev), presenceEvent, except, h.refresher(r))
		}
	default:
		r.broadcast(encodeFrame(ev), ev.ID)
	}
}

// refresher returns what a member's queue takes instead of a pile of
// presence events (see sendPresence): r's online frame, built at most once
// per broadcast. It runs under r.mu, held by the broadcast.
func (h *hub) refresher(r *room) func() *wsio.Frame {
	var pm *wsio.Frame
	return func() *wsio.Frame {
		if pm == nil {
			pm = wsio.NewTextFrame(h.onlineFrame(r))
		}
		return pm
	}
}

// broadcastPresence queues a presence frame of the given kind for every
// member but except; see sendPresence for how it merges with what waits.
// The caller holds r.mu.
func (r *room) broadcastPresence(frame []byte, kind presenceKind, except *conn, refresh func() *wsio.Frame) {
	if len(r.members) == 0 || len(r.members) == 1 && r.members[0] == except {
		return
	}
	pm := wsio.NewTextFrame(frame)
	for _, c := range r.members {
		if c != except {
			c.wc.Precompress(pm) // as in broadcast
			c.sendPresence(pm, kind, refresh)
		}
	}
}
