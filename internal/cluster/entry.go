package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// Every event a relay reads from shared storage or a message bus is input:
// anyone who can write to memcached under the prefix, or publish on the
// cluster's NATS subjects, can put anything there. The checks below bound
// sizes before parsing, and check every field by the rules a client's own
// frames follow, so that nothing read makes an instance loop, grow or send
// a frame that a client could not have caused. Every relay decodes with
// them, so that the rules are one.

// MaxSeq keeps Seq within what JavaScript numbers hold exactly.
const MaxSeq = 1<<53 - 1

// maxIDLen is the most digits of a connection id or a time.
const maxIDLen = 20

// Limits are the bounds of decoding that depend on configuration.
type Limits struct {
	// MaxMessage is max_message_size: no chat text read back is longer.
	MaxMessage int
}

// MaxEntryBytes bounds an encoded entry: a chat text of max_message_size,
// each byte escaped in JSON at worst as \u00XX, and the rest.
func (l Limits) MaxEntryBytes() int { return 6*l.MaxMessage + 2048 }

// ErrRejected is wrapped by every decoding failure.
var ErrRejected = errors.New("rejected value")

func reject(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrRejected}, args...)...)
}

// ValidNodeID reports whether s is a node id as the backends make them:
// 16 lowercase hex digits, and so a legal key part.
func ValidNodeID(s string) bool {
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

// ValidID reports whether s is a connection id: decimal, 1 to 20 digits.
func ValidID(s string) bool {
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

// CheckMember checks a member read back: its id, and names that the
// handler itself would have produced.
func CheckMember(m chat.Member) error {
	if !ValidID(m.ID) {
		return reject("member id %.30q", m.ID)
	}
	if m.Nick != "" {
		if clean, err := chat.CleanName(m.Nick); err != nil || clean != m.Nick {
			return reject("nick %.30q", m.Nick)
		}
	}
	if _, err := chat.VerifyUser(m.User); err != nil {
		return reject("user %.30q", m.User)
	}
	return nil
}

// CheckEvent checks an event read back.
func CheckEvent(ev *chat.Event, lim Limits) error {
	if ev == nil {
		return reject("no event")
	}
	switch ev.Kind {
	case chat.KindChat:
		if ev.Msg == "" || len(ev.Msg) > lim.MaxMessage || !utf8.ValidString(ev.Msg) {
			return reject("chat text of %d bytes", len(ev.Msg))
		}
		if ev.Time != "" && !ValidID(ev.Time) {
			return reject("time %.30q", ev.Time)
		}
		if ev.Seq > MaxSeq {
			return reject("seq %d", ev.Seq)
		}
	case chat.KindJoin, chat.KindLeave, chat.KindNick:
		if ev.Msg != "" || ev.Seq != 0 || ev.Time != "" {
			return reject("%s event with chat fields", ev.Kind)
		}
	default:
		return reject("kind %.20q", ev.Kind)
	}
	return CheckMember(ev.Member())
}

// Entry is one event relayed between instances: the value of a memcached
// relay log entry, and the payload of a NATS relay message.
type Entry struct {
	// Node is the instance that published the event.
	Node string `json:"node"`
	// Gen orders the presence changes of Node (see presence.go).
	Gen uint64 `json:"gen,omitempty"`
	// Room is the room the event happened in.
	Room string `json:"room"`
	// Event is the event itself.
	Event *chat.Event `json:"ev"`
	// Seed, on a chat event, says its room's counter was made anew (after
	// a memcached restart or eviction) from this value: the seqs up to it
	// that have not arrived never will (see Orderer). It is the seed, not
	// the event's own seq, because another writer may take a seq of the
	// new counter between the seeding and the seeder's own increment.
	Seed uint64 `json:"seed,omitempty"`
}

// DecodeEntry parses and checks a relayed entry.
func DecodeEntry(value []byte, lim Limits) (*Entry, error) {
	if len(value) > lim.MaxEntryBytes() {
		return nil, reject("entry of %d bytes", len(value))
	}
	var e Entry
	if err := json.Unmarshal(value, &e); err != nil {
		return nil, reject("entry: %v", err)
	}
	if !ValidNodeID(e.Node) {
		return nil, reject("entry node %.30q", e.Node)
	}
	if !chat.ValidRoom(e.Room) {
		return nil, reject("entry room %.70q", e.Room)
	}
	if err := CheckEvent(e.Event, lim); err != nil {
		return nil, err
	}
	return &e, nil
}
