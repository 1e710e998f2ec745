package memcached

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/cluster"
	"go.uber.org/zap"
)

// Presence across instances. Each instance owns a header key
// (<prefix>node:<node>: its generation, how many chunks) and chunk keys
// holding its members by room, at most maxChunkBytes each and at most
// ListCap members listed per room beside the room's count, so that no value
// grows with members. All of them are rewritten (or touched, when nothing
// changed) every heartbeat with the instance's ttl, so that they vanish
// within ttl when the instance dies. Instances find each other through an
// index key (<prefix>nodes), kept with Add and CompareAndSwap. Join, leave
// and nick events also travel through the relay log, to arrive within one
// poll; a reader fetches another instance's chunks only when its header's
// generation moved, and a snapshot repairs any event that went missing
// (cluster.View).

// indexTTL is the lifetime of the index of instances, refreshed by every
// live instance at each heartbeat.
func (r *Backend) indexTTL() time.Duration { return max(3*r.nodeTTL, time.Minute) }

// heartbeatLoop writes this instance's snapshot, keeps it in the index and
// reads the others'. While the index's server is unreachable it only
// probes, every downProbe.
func (r *Backend) heartbeatLoop() {
	defer r.wg.Done()
	t := time.NewTimer(r.heartbeat) // Start made the first beat
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		case <-r.wakeHeartbeat:
		}
		r.beat()
		period := r.heartbeat
		if !r.client.up() {
			period = min(period, downProbe)
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(period)
	}
}

// beat is one heartbeat: write this instance's snapshot, then read the
// others'.
func (r *Backend) beat() {
	r.writeSnapshot()
	ids := r.joinIndex()
	r.readSnapshots(ids)
	r.beats.Add(1)
}

// lastWritten remembers the generation whose chunks were last written, so
// that an unchanged snapshot is only touched.
type lastWritten struct {
	gen    uint64
	chunks int
}

// writeSnapshot writes this instance's chunks and header. The chunks go
// first, so that a reader who sees the header finds chunks of its
// generation or newer ones (then it reads again next heartbeat).
func (r *Backend) writeSnapshot() {
	head := r.keys.node(r.nodeID)
	s := r.client.route(head)
	if !s.usable() {
		return
	}
	idHigh := r.ids.blockEnd()
	r.mu.Lock()
	gen := r.gen
	written := r.written
	var chunks [][]byte
	if gen != written.gen || written.chunks < 0 {
		chunks = r.encodeChunksLocked(gen)
	}
	r.mu.Unlock()
	ttl := expirySeconds(r.nodeTTL)
	n := written.chunks
	if chunks != nil {
		n = len(chunks)
		for i, value := range chunks {
			if err := s.set(&memcache.Item{Key: r.keys.chunk(r.nodeID, i), Value: value, Expiration: ttl}); err != nil {
				r.setWritten(lastWritten{chunks: -1})
				return
			}
		}
	} else {
		for i := 0; i < n; i++ {
			if err := s.touch(r.keys.chunk(r.nodeID, i), ttl); err != nil {
				r.setWritten(lastWritten{chunks: -1}) // a restart lost it: write again
				if !isMiss(err) {
					return
				}
				break
			}
		}
	}
	value, err := json.Marshal(header{Gen: gen, IDHigh: idHigh, Chunks: n, MaxMessage: int(r.maxMessage.Load())})
	if err != nil {
		return
	}
	if err := s.set(&memcache.Item{Key: head, Value: value, Expiration: ttl}); err != nil {
		r.setWritten(lastWritten{chunks: -1})
		return
	}
	if chunks != nil {
		r.setWritten(lastWritten{gen: gen, chunks: n})
	}
}

func (r *Backend) setWritten(w lastWritten) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w.chunks < 0 {
		r.written.chunks = -1
		return
	}
	r.written = w
	r.chunksOut = max(r.chunksOut, w.chunks)
}

// encodeChunksLocked encodes this instance's members as chunks of at most
// maxChunkBytes. The caller holds r.mu.
func (r *Backend) encodeChunksLocked(gen uint64) [][]byte {
	rooms := make([]string, 0, len(r.local))
	for room := range r.local {
		rooms = append(rooms, room)
	}
	sort.Strings(rooms)
	listCap := r.view.ListCap
	var out [][]byte
	var buf bytes.Buffer
	open := func() {
		buf.Reset()
		buf.WriteString(`{"gen":`)
		b, _ := json.Marshal(gen)
		buf.Write(b)
		buf.WriteString(`,"rooms":{`)
	}
	closeChunk := func() {
		buf.WriteString("}}")
		out = append(out, bytes.Clone(buf.Bytes()))
	}
	open()
	inChunk := 0
	if len(rooms) > cluster.MaxNodeRooms {
		r.logger.Warn("presence snapshot too large: rooms beyond it are listed by events only", zap.Int("rooms", len(rooms)), zap.Int("max", cluster.MaxNodeRooms))
		rooms = rooms[:cluster.MaxNodeRooms]
	}
	listed := 0
	for _, room := range rooms {
		members := r.local[room]
		wr := wireRoom{N: len(members)}
		for _, m := range members {
			wr.M = append(wr.M, m)
		}
		sort.Slice(wr.M, func(i, j int) bool { return chat.IDLess(wr.M[i].ID, wr.M[j].ID) })
		if len(wr.M) > listCap {
			wr.M = wr.M[:listCap]
		}
		if listed+len(wr.M) > cluster.MaxNodeMembers {
			// Others would reject the snapshot as a whole: list no
			// more, and let the rest travel by events.
			r.logger.Warn("presence snapshot too large: rooms beyond it are listed by events only", zap.Int("listed", listed), zap.Int("max", cluster.MaxNodeMembers))
			break
		}
		listed += len(wr.M)
		name, _ := json.Marshal(room)
		body, err := json.Marshal(wr)
		if err != nil {
			continue
		}
		if inChunk > 0 && buf.Len()+len(name)+len(body)+8 > maxChunkBytes {
			closeChunk()
			if len(out) >= maxChunks {
				r.logger.Warn("presence snapshot too large: rooms beyond it are listed by events only", zap.Int("rooms", len(rooms)), zap.Int("chunks", maxChunks))
				return out
			}
			open()
			inChunk = 0
		}
		if inChunk > 0 {
			buf.WriteByte(',')
		}
		buf.Write(name)
		buf.WriteByte(':')
		buf.Write(body)
		inChunk++
	}
	closeChunk()
	return out
}

// joinIndex makes sure the index lists this instance, drops instances
// found dead and anything malformed, refreshes its lifetime, and returns
// the instances it lists.
func (r *Backend) joinIndex() []string {
	key := r.keys.nodeIndex()
	s := r.client.route(key)
	if !s.usable() {
		return nil
	}
	ttl := expirySeconds(r.indexTTL())
	it, err := s.get(key)
	if isMiss(err) {
		_ = s.add(&memcache.Item{Key: key, Value: []byte(r.nodeID), Expiration: ttl})
		return nil // another instance may have won the add: read it next time
	}
	if err != nil {
		return nil
	}
	ids, dropped := parseIndex(it.Value)
	if dropped {
		r.metrics.rejected("index")
		r.logger.Warn("dropping malformed entries from the instance index in memcached", zap.String("key", key))
	}
	r.mu.Lock()
	keep := ids[:0:0]
	self := false
	for _, id := range ids {
		if r.view.Dead(id) {
			continue
		}
		self = self || id == r.nodeID
		keep = append(keep, id)
	}
	r.mu.Unlock()
	if !self {
		keep = append(keep, r.nodeID)
	}
	if dropped || len(keep) != len(ids) || !self {
		it.Value = []byte(strings.Join(keep, " "))
		it.Expiration = ttl
		_ = s.cas(it) // a conflict is retried next heartbeat
	} else {
		_ = s.touch(key, ttl)
	}
	return keep
}

// leaveIndex removes this instance from the index, on Close.
func (r *Backend) leaveIndex() {
	key := r.keys.nodeIndex()
	s := r.client.route(key)
	for attempt := 0; attempt < 3; attempt++ {
		it, err := s.get(key)
		if err != nil {
			return
		}
		ids, _ := parseIndex(it.Value)
		keep := ids[:0:0]
		for _, id := range ids {
			if id != r.nodeID {
				keep = append(keep, id)
			}
		}
		it.Value = []byte(strings.Join(keep, " "))
		if err := s.cas(it); err == nil || isMiss(err) || !answer(err) {
			return
		}
	}
}

// readSnapshots reads the headers of the instances in ids and of those
// already known, then the chunks of those whose generation moved, and
// brings the view up to date. A header missing twice, a heartbeat apart,
// means its instance is dead; one whose server cannot be reached is
// unknown, not missing.
func (r *Backend) readSnapshots(ids []string) {
	r.mu.Lock()
	nodes := r.view.Nodes()
	r.mu.Unlock()
	all := make(map[string]bool)
	heads := make(map[*server][]string)
	for _, list := range [][]string{ids, nodes} {
		for _, id := range list {
			if id == r.nodeID || all[id] {
				continue
			}
			all[id] = true
			key := r.keys.node(id)
			if s := r.client.route(key); s.usable() {
				heads[s] = append(heads[s], key)
			}
		}
	}
	items, failed := getFrom(heads)
	now := time.Now()
	type fetch struct {
		id string
		h  *header
	}
	var fetches []fetch
	chunkKeys := make(map[*server][]string)
	var leaves []map[string][]*chat.Event
	r.mu.Lock()
	for id := range all {
		key := r.keys.node(id)
		s := r.client.route(key)
		asked := false
		for _, k := range heads[s] {
			asked = asked || k == key
		}
		if !asked || failed[key] {
			continue
		}
		it := items[key]
		if it == nil {
			if gone := r.view.Missing(id, now); len(gone) > 0 {
				leaves = append(leaves, gone)
				r.logger.Info("instance gone: its members leave", zap.String("gone", id))
			}
			continue
		}
		h, err := decodeHeader(it.Value)
		if err != nil {
			r.metrics.rejected("snapshot")
			r.logger.Warn("ignoring a malformed presence header in memcached", zap.String("key", key), zap.Error(err))
			continue
		}
		r.view.Alive(id, now)
		r.idHigh[id] = max(r.idHigh[id], h.IDHigh)
		if h.MaxMessage >= minAcceptedLimit && h.MaxMessage <= maxAcceptedLimit {
			r.acceptOf[id] = h.MaxMessage
		} else {
			delete(r.acceptOf, id) // none said, or forged: not believed
		}
		if r.view.NeedsSnapshot(id, h.Gen) {
			fetches = append(fetches, fetch{id, h})
			for i := 0; i < h.Chunks; i++ {
				chunkKeys[s] = append(chunkKeys[s], r.keys.chunk(id, i))
			}
		}
	}
	for id := range r.idHigh {
		if !all[id] {
			delete(r.idHigh, id) // neither listed nor known: forgotten
			delete(r.acceptOf, id)
		}
	}
	r.mu.Unlock()
	for _, gone := range leaves {
		for room, events := range gone {
			r.host.DeliverWith(room, func() []*chat.Event { return events })
		}
	}
	if len(fetches) == 0 {
		return
	}
	chunks, _ := getFrom(chunkKeys)
	for _, f := range fetches {
		snap, ok := r.assemble(f.id, f.h, chunks)
		if !ok {
			continue // incomplete or changing: read again next heartbeat
		}
		r.mu.Lock()
		rooms, err := r.view.SnapshotRooms(f.id, snap, now)
		if err != nil {
			r.view.Refused(f.id, f.h.Gen, now)
		}
		r.mu.Unlock()
		if err != nil {
			r.metrics.rejected("snapshot")
			r.logger.Warn("ignoring a presence snapshot beyond the caps", zap.String("from_node", f.id), zap.Error(err))
			continue
		}
		for _, room := range rooms {
			r.host.DeliverWith(room, func() []*chat.Event {
				r.mu.Lock()
				defer r.mu.Unlock()
				events, dropped := r.view.ApplySnapshotRoom(f.id, room, snap)
				if dropped > 0 {
					// Another instance cannot speak for a member of
					// this one: forged entries, as in the relay log.
					for range dropped {
						r.metrics.rejected("snapshot")
					}
					r.logger.Warn("ignoring presence snapshot entries about members of this instance", zap.String("room", room), zap.String("from_node", f.id), zap.Int("entries", dropped))
				}
				if len(r.local[room]) == 0 {
					return nil // nobody here to tell
				}
				return events
			})
		}
	}
}

// assemble decodes the chunks of one instance's snapshot; it fails when a
// chunk is missing, malformed or of another generation. A snapshot beyond
// the caps of one instance (cluster.MaxNodeRooms, MaxNodeMembers) is
// rejected as a whole as soon as it is seen to be, and not read again until
// its generation moves.
func (r *Backend) assemble(id string, h *header, items map[string]*memcache.Item) (*cluster.Snapshot, bool) {
	snap := &cluster.Snapshot{Gen: h.Gen, Rooms: make(map[string]cluster.RoomSnapshot)}
	listed := 0
	for i := 0; i < h.Chunks; i++ {
		key := r.keys.chunk(id, i)
		it := items[key]
		if it == nil {
			return nil, false
		}
		c, err := decodeChunk(it.Value, r.view.ListCap)
		if err != nil {
			r.metrics.rejected("snapshot")
			r.logger.Warn("ignoring a malformed presence chunk in memcached", zap.String("key", key), zap.Error(err))
			return nil, false
		}
		if c.Gen != h.Gen {
			return nil, false
		}
		for room, wr := range c.Rooms {
			snap.Rooms[room] = cluster.RoomSnapshot{Count: wr.N, Members: wr.M, Part: i}
			listed += len(wr.M)
		}
		if len(snap.Rooms) > cluster.MaxNodeRooms || listed > cluster.MaxNodeMembers {
			r.metrics.rejected("snapshot")
			r.logger.Warn("ignoring a presence snapshot beyond the caps", zap.String("from_node", id),
				zap.Int("rooms", len(snap.Rooms)), zap.Int("listed", listed), zap.Int("max_rooms", cluster.MaxNodeRooms), zap.Int("max_listed", cluster.MaxNodeMembers))
			r.mu.Lock()
			r.view.Refused(id, h.Gen, time.Now())
			r.mu.Unlock()
			return nil, false
		}
	}
	return snap, true
}
