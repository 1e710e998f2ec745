package memcached

import (
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/cluster"
	"go.uber.org/zap"
)

// fillRoom lists the members other instances have in room, which the view
// kept as counts while this instance did not follow it (cluster.View): it
// reads the one chunk of each instance's snapshot that lists the room, or,
// where the view came from events only and the chunk is not known, that
// instance's header and chunks. Warm calls it for a joiner, so that the
// joiner's online list has them; the next snapshots keep them.
func (r *Backend) fillRoom(room string) {
	r.mu.Lock()
	sources := r.view.Unlisted(room)
	r.mu.Unlock()
	if len(sources) == 0 {
		return
	}
	chunkKeys := make(map[*server][]string)
	owner := make(map[string]string) // chunk key -> instance
	heads := make(map[*server][]string)
	for id, part := range sources {
		s := r.client.route(r.keys.node(id))
		if !s.usable() {
			continue
		}
		if part < 0 {
			heads[s] = append(heads[s], r.keys.node(id))
			continue
		}
		k := r.keys.chunk(id, part)
		chunkKeys[s] = append(chunkKeys[s], k)
		owner[k] = id
	}
	if len(heads) > 0 {
		items, _ := getFrom(heads)
		for s, keys := range heads {
			for _, key := range keys {
				it := items[key]
				if it == nil {
					continue
				}
				h, err := decodeHeader(it.Value)
				if err != nil {
					continue // readSnapshots counts it
				}
				id := key[len(r.keys.node("")):]
				for i := 0; i < h.Chunks; i++ {
					k := r.keys.chunk(id, i)
					chunkKeys[s] = append(chunkKeys[s], k)
					owner[k] = id
				}
			}
		}
	}
	items, _ := getFrom(chunkKeys)
	type found struct {
		id  string
		gen uint64
		rs  cluster.RoomSnapshot
	}
	var lists []found
	for key, it := range items {
		c, err := decodeChunk(it.Value, r.view.ListCap)
		if err != nil {
			r.metrics.rejected("snapshot")
			r.logger.Warn("ignoring a malformed presence chunk in memcached", zap.String("key", key), zap.Error(err))
			continue
		}
		if wr, ok := c.Rooms[room]; ok {
			lists = append(lists, found{owner[key], c.Gen, cluster.RoomSnapshot{Count: wr.N, Members: wr.M}})
		}
	}
	r.host.DeliverWith(room, func() []*chat.Event {
		r.mu.Lock()
		defer r.mu.Unlock()
		var out []*chat.Event
		for _, l := range lists {
			events, dropped := r.view.FillRoom(l.id, room, l.gen, l.rs)
			for range dropped {
				r.metrics.rejected("snapshot")
			}
			out = append(out, events...)
		}
		// An instance whose chunk did not list the room (it moved on,
		// or memcached did not answer) is read whole at the next
		// heartbeat, generation moved or not.
		for id := range r.view.Unlisted(room) {
			r.view.Stale(id)
		}
		if len(r.local[room]) == 0 {
			return nil // the joiner on its way reads the view itself
		}
		return out
	})
}
