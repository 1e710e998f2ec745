package memcached

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// Every value read from memcached is input: anyone who can write to
// memcached can put anything under the prefix. The decoders below bound
// sizes before parsing, and check every field by the rules a client's own
// frames follow, so that nothing read makes this instance loop, grow or
// send a frame that a client could not have caused.

// Size caps of values read back.
const (
	maxCounterLen   = 20 // digits of a uint64
	maxIDLen        = 20
	maxIndexBytes   = 64 << 10
	maxIndexNodes   = 1024
	maxHeaderBytes  = 1 << 10
	maxChunkBytes   = 256 << 10 // also what a chunk is filled to when written
	maxChunks       = 64        // 16 MB of presence per instance
	maxHistoryBytes = 900 << 10 // under memcached's 1 MB item size
	// maxSeq keeps Seq within what JavaScript numbers hold exactly.
	maxSeq = 1<<53 - 1
)

// limits are the bounds that depend on configuration.
type limits struct {
	// maxMessage is max_message_size: no chat text read back is longer.
	maxMessage int
}

// errRejected is wrapped by every decoding failure.
var errRejected = errors.New("rejected value")

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

// validNodeID reports whether s is a node id as randomNodeID makes them:
// 16 lowercase hex digits, and so a legal key part.
func validNodeID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

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

// validID reports whether s is a connection id: decimal, 1 to 20 digits.
func validID(s string) bool {
	if len(s) == 0 || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// checkMember checks a member read back: its id, and names that the
// handler itself would have produced.
func checkMember(m chat.Member) error {
	if !validID(m.ID) {
		return reject("member id %.30q", m.ID)
	}
	if m.Nick != "" {
		if clean, err := chat.CleanName(m.Nick); err != nil || clean != m.Nick {
			return reject("nick %.30q", m.Nick)
		}
	}
	if m.User != "" && chat.CleanUser(m.User) != m.User {
		return reject("user %.30q", m.User)
	}
	return nil
}

// checkEvent checks an event read back.
func checkEvent(ev *chat.Event, lim limits) error {
	if ev == nil {
		return reject("no event")
	}
	switch ev.Kind {
	case chat.KindChat:
		if ev.Msg == "" || len(ev.Msg) > lim.maxMessage || !utf8.ValidString(ev.Msg) {
			return reject("chat text of %d bytes", len(ev.Msg))
		}
		if ev.Time != "" && !validID(ev.Time) {
			return reject("time %.30q", ev.Time)
		}
		if ev.Seq > maxSeq {
			return reject("seq %d", ev.Seq)
		}
	case chat.KindJoin, chat.KindLeave, chat.KindNick:
		if ev.Msg != "" || ev.Seq != 0 || ev.Time != "" {
			return reject("%s event with chat fields", ev.Kind)
		}
	default:
		return reject("kind %.20q", ev.Kind)
	}
	return checkMember(ev.Member())
}

// logEntry is the value of a relay log entry.
type logEntry struct {
	// Node is the instance that published the event.
	Node string `json:"node"`
	// Gen orders the presence changes of Node (see presence.go).
	Gen uint64 `json:"gen,omitempty"`
	// Room is the room the event happened in.
	Room string `json:"room"`
	// Event is the event itself.
	Event *chat.Event `json:"ev"`
}

// maxEntryBytes bounds an entry: a chat text of max_message_size, each
// byte escaped in JSON at worst as \u00XX, and the rest.
func (l limits) maxEntryBytes() int { return 6*l.maxMessage + 2048 }

// decodeEntry parses and checks a log entry.
func decodeEntry(value []byte, lim limits) (*logEntry, error) {
	if len(value) > lim.maxEntryBytes() {
		return nil, reject("entry of %d bytes", len(value))
	}
	var e logEntry
	if err := json.Unmarshal(value, &e); err != nil {
		return nil, reject("entry: %v", err)
	}
	if !validNodeID(e.Node) {
		return nil, reject("entry node %.30q", e.Node)
	}
	if !chat.ValidRoom(e.Room) {
		return nil, reject("entry room %.70q", e.Room)
	}
	if err := checkEvent(e.Event, lim); err != nil {
		return nil, err
	}
	return &e, nil
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

func decodeHistory(value []byte, lim limits, keep int) ([]*chat.Event, error) {
	if len(value) > maxHistoryBytes {
		return nil, reject("history of %d bytes", len(value))
	}
	var h historyValue
	if err := json.Unmarshal(value, &h); err != nil {
		return nil, reject("history: %v", err)
	}
	out := make([]*chat.Event, 0, min(len(h.Events), keep))
	var last uint64
	for _, ev := range h.Events {
		if err := checkEvent(ev, lim); err != nil || ev.Kind != chat.KindChat {
			return nil, reject("history event: %v", err)
		}
		if ev.Seq != 0 && ev.Seq < last {
			return nil, reject("history out of order")
		}
		last = max(last, ev.Seq)
		out = append(out, ev)
	}
	if len(out) > keep {
		out = out[len(out)-keep:]
	}
	return out, nil
}
