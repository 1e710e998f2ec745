package chatroom

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// Lock order. A goroutine that holds one of these locks may take only
// those below it:
//
//  1. hub.mu: the room map (and closed).
//  2. room.mu: a room's members; it orders every event of the room.
//  3. The registry's locks: memcached.Backend.mu, then the history's
//     (embeddedRegistry.mu), which a backend takes under its own. The hub
//     calls Publish, History, Since, RemoteMembers and RemoteCount under
//     room.mu, and DeliverWith runs a backend's update under room.mu, or
//     under hub.mu when the room has no members. So a backend never calls
//     the cluster.Host (DeliverWith) while it holds a lock of its own.
//  4. Leaves, which call nothing while held: the id allocator's, the
//     memcached servers' up/down state, the presence view's.
//
// conn.mu is taken under room.mu (a member's send queue) and never held
// while taking any lock above; a writer or closer drops it before it
// writes. The transport's locks (internal/wsio: batchConn.mu, the
// poller's) are leaves: the poller wakes a connection with none held.
// hub holds the rooms of this instance and fans every event out to their
// local members. One hub serves every handler that shares a registry
// configuration, and it outlives config reloads (see pool.go), so that a
// reload neither splits a room in two nor drops a connection.
type hub struct {
	reg     registry
	metrics *metrics
	logger  *zap.Logger

	startOnce sync.Once
	startErr  error

	open atomic.Int64 // connections, for max_connections

	handlers handlerSet // the handlers using this hub (reload.go)

	frames  frameCache  // replayed events' frames, shared (framecache.go)
	replays replaySlots // big replays in progress (resume.go)

	mu     sync.Mutex
	rooms  map[string]*room
	closed bool
}

// room is one chat room's members on this instance. Its lock orders every
// event of the room: what a member is sent, it is sent in one order.
type room struct {
	name string

	mu       sync.Mutex
	members  []*conn
	dead     bool         // removed from the hub; a joiner must fetch a fresh room
	presence roomPresence // full presence or counts (presence.go)
}

// errHubClosed is returned to a connection that arrives while the hub shuts
// down.
var errHubClosed = errors.New("chat room is shutting down")

func newHub(reg registry, m *metrics, logger *zap.Logger) *hub {
	return &hub{reg: reg, metrics: m, logger: logger, rooms: make(map[string]*room)}
}

// reserve takes one of limit connection slots; limit 0 is no limit.
func (h *hub) reserve(limit int) bool {
	n := h.open.Add(1)
	if limit > 0 && n > int64(limit) {
		h.open.Add(-1)
		return false
	}
	return true
}

// release gives a slot back.
func (h *hub) release() { h.open.Add(-1) }

// roomOpen reports whether a connection may join room name with max_rooms
// limit: the room is open already, or one more fits (0 is no limit). Two
// joins racing for the last slot may both pass: the limit protects memory,
// and one room too many does not threaten it.
func (h *hub) roomOpen(name string, limit int) bool {
	if limit <= 0 {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.rooms[name]
	return ok || len(h.rooms) < limit
}

// keepHistory asks the registry to keep the last n chat messages of every
// room.
func (h *hub) keepHistory(n int) { h.reg.KeepHistory(n) }

// acceptPresence raises what the registry keeps of other instances'
// presence.
func (h *hub) acceptPresence(p RemotePresence) { h.reg.AcceptPresence(p.Rooms, p.Members) }

// acceptMessages raises the largest chat text the registry relays.
func (h *hub) acceptMessages(n int) { h.reg.AcceptMessages(n) }

// keepWindow raises how long the registry keeps chat events for a resume.
func (h *hub) keepWindow(d time.Duration) { h.reg.KeepWindow(d) }

// start starts the registry once, on the first connection, so that a config
// that is only validated never registers this instance anywhere.
func (h *hub) start() error {
	h.startOnce.Do(func() {
		if err := h.reg.Start(h); err != nil {
			h.startErr = err
		}
	})
	return h.startErr
}

// join adds c to its room: c is sent its welcome, the online list and the
// room's history or what it missed (resume.go), and the other members are
// told.
func (h *hub) join(ctx context.Context, c *conn) error {
	if err := h.start(); err != nil {
		return err
	}
	c.identify(h.reg.NewID(ctx))
	h.reg.Warm(ctx, c.roomName)
	if rs := c.opts.resume; rs.valid {
		h.reg.CatchUp(ctx, c.roomName, rs.after)
	}
	for {
		r, err := h.room(c.roomName, c.opts.presenceLimit)
		if err != nil {
			return err
		}
		r.mu.Lock()
		if r.dead {
			r.mu.Unlock()
			continue
		}
		if refusedVia(c) {
			r.mu.Unlock()
			return errHandlerGone
		}
		past, err := h.pastFor(r, c)
		if err != nil {
			r.mu.Unlock()
			return err
		}
		c.placeAt(r, len(r.members))
		r.members = append(r.members, c)
		// These wait for serve, which holds c's writer (newConn).
		c.sendFrame(welcomeMessage(c.member, r.name))
		c.sendFrame(h.onlineFrame(r))
		h.replay(r, c, past)
		h.publishPresence(r, chat.NewPresence(chat.KindJoin, c.member), c)
		r.mu.Unlock()
		h.metrics.connections.Inc()
		return nil
	}
}

// room returns the live room called name, creating it with the given
// presence_limit.
func (h *hub) room(name string, presenceLimit int) (*room, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errHubClosed
	}
	r := h.rooms[name]
	if r == nil {
		r = &room{name: name}
		r.presence.limit = max(presenceLimit, 1)
		h.rooms[name] = r
		h.metrics.rooms.Inc()
	}
	return r, nil
}

// leave removes c from its room and tells the other members. It is safe to
// call more than once.
func (h *hub) leave(c *conn) {
	r := c.room
	if r == nil {
		return
	}
	r.mu.Lock()
	if c.index < 0 {
		r.mu.Unlock()
		return
	}
	last := len(r.members) - 1
	r.members[c.index] = r.members[last]
	r.members[c.index].moveTo(c.index)
	r.members[last] = nil
	r.members = r.members[:last]
	c.moveTo(-1)
	h.publishPresence(r, chat.NewPresence(chat.KindLeave, c.member), nil)
	empty := len(r.members) == 0
	if empty {
		r.dead = true
		r.stopCount()
	}
	r.mu.Unlock()
	h.metrics.connections.Dec()
	if empty {
		h.mu.Lock()
		if h.rooms[r.name] == r {
			delete(h.rooms, r.name)
			h.metrics.rooms.Dec()
		}
		h.mu.Unlock()
	}
}

// chat sends a chat message from c to the other members of its room. The
// registry gives it its place in the room's order (one order for every
// member on every instance) and hands it back through DeliverWith; c
// reads its member without a lock because only c's reader changes it.
func (h *hub) chat(c *conn, text string) {
	h.reg.Chat(c.room.name, chat.NewChat(c.member, text, time.Now()))
}

// rename changes c's display name and tells the other members.
func (h *hub) rename(c *conn, nick string) {
	r := c.room
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.member.Nick == nick {
		return
	}
	c.setNick(nick)
	h.publishPresence(r, chat.NewPresence(chat.KindNick, c.member), c)
}

// DeliverWith implements cluster.Host: it runs update under the lock that orders
// room's events, then fans the events it returns out to the room's local
// members. A registry
// uses it to record a remote event (history, presence) and deliver it in
// one step, so that a member joining at that moment finds the event either
// in what it is shown on joining or live, never both or neither.
func (h *hub) DeliverWith(name string, update func() []*chat.Event) {
	for {
		h.mu.Lock()
		r := h.rooms[name]
		if r == nil {
			update() // no members to tell; a joiner takes h.mu first
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		r.mu.Lock()
		if r.dead {
			r.mu.Unlock()
			continue // being removed: a joiner will make a fresh room
		}
		for _, ev := range update() {
			h.deliverLocal(r, ev, nil)
		}
		r.mu.Unlock()
		return
	}
}

// broadcast queues one chat frame for every member but its author, whose
// own message is not echoed (author is its id; a remote author matches no
// member here). The frame is
// encoded once, so every member shares the same bytes on the wire; with
// compression, it is compressed once too, here, and the members that
// negotiated it share those bytes. The caller holds r.mu.
func (r *room) broadcast(frame []byte, author string) {
	if len(r.members) == 0 || len(r.members) == 1 && r.members[0].member.ID == author {
		return
	}
	pm := wsio.NewTextFrame(frame)
	for _, c := range r.members {
		if c.member.ID != author {
			c.wc.Precompress(pm) // once, at the first member that wants it
			c.send(pm)
		}
	}
}

// shutdownClosers bounds the goroutines that close connections at
// shutdown.
const shutdownClosers = 64

// shutdown closes every connection with 1001 Going Away, waiting at most
// for timeout, and refuses new ones.
func (h *hub) shutdown(timeout time.Duration) {
	h.mu.Lock()
	h.closed = true
	var conns []*conn
	for _, r := range h.rooms {
		r.mu.Lock()
		conns = append(conns, r.members...)
		r.mu.Unlock()
	}
	h.mu.Unlock()

	// A few closers in parallel: a close waits up to closeWait on a client
	// that does not read, but a goroutine per connection would start
	// thousands at once.
	work := make(chan *conn, len(conns))
	for _, c := range conns {
		work <- c
	}
	close(work)
	var wg sync.WaitGroup
	for range min(len(conns), shutdownClosers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				c.closeWith(websocket.CloseGoingAway, "server shutting down", "shutdown")
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		h.logger.Warn("connections did not close in time", zap.Int("connections", len(conns)), zap.Duration("timeout", timeout))
	}
}
