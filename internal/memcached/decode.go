package memcached

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/cluster"
)

// Every value read from memcached is input: anyone who can write to
// memcached can put anything under the prefix. The decoders below bound
// sizes before parsing, and check every field by the rules a client's own
// frames follow, so that nothing read makes this instance loop, grow or
// send a frame that a client could not have caused.

// Size caps of values read back.
const (
	maxCounterLen   = 20 // digits of a uint64
	maxIndexBytes   = 64 << 10
	maxIndexNodes   = 1024
	maxHeaderBytes  = 1 << 10
	maxChunkBytes   = 256 << 10 // also what a chunk is filled to when written
	maxChunks       = 64        // 16 MB of presence per instance
	maxHistoryBytes = 900 << 10 // under memcached's 1 MB item size
)

// limits are the bounds that depend on configuration.
type limits struct {
	// maxMessage is max_message_size: no chat text read back is longer.
	maxMessage int
}

// cluster returns the bounds in the form the shared checks take.
func (l limits) cluster() cluster.Limits { return cluster.Limits{MaxMessage: l.maxMessage} }

// errRejected is wrapped by every decoding failure.
var errRejected = cluster.ErrRejected

func reject(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errRejected}, args...)...)
}

// parseCounter reads a counter's value: decimal, at most 20 digits, with
// the padding memcached may leave when a counter shrinks in digits.
func parseCounter(value []byte) (uint64, error) {
	value = bytes.TrimRight(value, " \r\n")
	if len(value) == 0 || len(value) > maxCounterLen {
		return 0, reject("counter of %d bytes", len(value))
	}
	n, err := strconv.ParseUint(string(value), 10, 64)
	if err != nil {
		return 0, reject("counter %q", value)
	}
	return n, nil
}

// validNodeID reports whether s is a node id (cluster.ValidNodeID).
func validNodeID(s string) bool { return cluster.ValidNodeID(s) }

// parseIndex reads the index of instances: the valid node ids it lists
// (at most maxIndexNodes, without duplicates), and whether anything was
// dropped, in which case the index should be written back without it.
func parseIndex(value []byte) (ids []string, dropped bool) {
	if len(value) > maxIndexBytes {
		value, dropped = value[:maxIndexBytes], true
	}
	seen := make(map[string]bool)
	for _, f := range bytes.Fields(value) {
		id := string(f)
		if !validNodeID(id) || seen[id] || len(ids) >= maxIndexNodes {
			dropped = true
			continue
		}
		seen[id] = true
		ids = append(ids, id)
	}
	return ids, dropped
}

// validID reports whether s is a connection id (cluster.ValidID).
func validID(s string) bool { return cluster.ValidID(s) }

// checkMember checks a member read back (cluster.CheckMember).
func checkMember(m chat.Member) error { return cluster.CheckMember(m) }

// checkEvent checks an event read back (cluster.CheckEvent).
func checkEvent(ev *chat.Event, lim limits) error { return cluster.CheckEvent(ev, lim.cluster()) }

// logEntry is the value of a relay log entry.
type logEntry = cluster.Entry

// decodeEntry parses and checks a log entry (cluster.DecodeEntry).
func decodeEntry(value []byte, lim limits) (*logEntry, error) {
	return cluster.DecodeEntry(value, lim.cluster())
}

// header is the value of an instance's presence header.
type header struct {
	// Gen is the generation the snapshot reflects.
	Gen uint64 `json:"gen"`
	// IDHigh is the highest id counter value the instance obtained: a
	// re-seed of the counter must land above it.
	IDHigh uint64 `json:"id_high,omitempty"`
	// Chunks is how many chunk keys hold the snapshot.
	Chunks int `json:"chunks"`
	// MaxMessage is the largest chat text the instance accepts from the
	// relay: a sender elsewhere is told when its message is over it.
	MaxMessage int `json:"max_msg,omitempty"`
}

func decodeHeader(value []byte) (*header, error) {
	if len(value) > maxHeaderBytes {
		return nil, reject("header of %d bytes", len(value))
	}
	var h header
	if err := json.Unmarshal(value, &h); err != nil {
		return nil, reject("header: %v", err)
	}
	if h.Chunks < 0 || h.Chunks > maxChunks {
		return nil, reject("header with %d chunks", h.Chunks)
	}
	return &h, nil
}

// chunk is the value of one chunk of a presence snapshot.
type chunk struct {
	Gen   uint64              `json:"gen"`
	Rooms map[string]wireRoom `json:"rooms"`
}

// wireRoom is an instance's members in one room: N of them, of which M
// lists at most a bounded number.
type wireRoom struct {
	N int           `json:"n"`
	M []chat.Member `json:"m,omitempty"`
}

// maxRoomCount bounds a member count read back.
const maxRoomCount = 10_000_000

func decodeChunk(value []byte, listCap int) (*chunk, error) {
	if len(value) > maxChunkBytes {
		return nil, reject("chunk of %d bytes", len(value))
	}
	var c chunk
	if err := json.Unmarshal(value, &c); err != nil {
		return nil, reject("chunk: %v", err)
	}
	for room, wr := range c.Rooms {
		if !chat.ValidRoom(room) {
			return nil, reject("chunk room %.70q", room)
		}
		if wr.N < 0 || wr.N > maxRoomCount || len(wr.M) > listCap {
			return nil, reject("chunk room %s with %d members, %d listed", room, wr.N, len(wr.M))
		}
		for _, m := range wr.M {
			if err := checkMember(m); err != nil {
				return nil, err
			}
		}
	}
	return &c, nil
}

// historyValue is the value of a room's history key.
type historyValue struct {
	Events []*chat.Event `json:"events"`
}

// decodeHistory parses and checks a room's history. An event without a
// seq is dropped, and counted in dropped: a client resuming names the seq
// of the last message it got, so a message replayed without one could
// neither be resumed after nor told apart from the live ones. Any other
// fault rejects the whole value.
func decodeHistory(value []byte, lim limits, keep int) (events []*chat.Event, dropped int, err error) {
	if len(value) > maxHistoryBytes {
		return nil, 0, reject("history of %d bytes", len(value))
	}
	var h historyValue
	if err := json.Unmarshal(value, &h); err != nil {
		return nil, 0, reject("history: %v", err)
	}
	out := make([]*chat.Event, 0, min(len(h.Events), keep))
	var last uint64
	for _, ev := range h.Events {
		if err := checkEvent(ev, lim); err != nil || ev.Kind != chat.KindChat {
			return nil, 0, reject("history event: %v", err)
		}
		if ev.Seq == 0 {
			dropped++
			continue
		}
		if ev.Seq < last {
			return nil, 0, reject("history out of order")
		}
		last = ev.Seq
		out = append(out, ev)
	}
	if len(out) > keep {
		out = out[len(out)-keep:]
	}
	return out, dropped, nil
}
