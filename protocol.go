package chatroom

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Event kinds. They travel between instances in the memcached room log, so
// their spelling is part of the cluster's wire format.
const (
	KindChat  = "chat"
	KindJoin  = "join"
	KindLeave = "leave"
	KindNick  = "nick"
)

// Error codes of refused frames (SPEC §3).
const (
	ErrCodeInvalidJSON = "invalid_json"
	ErrCodeRateLimited = "rate_limited"
	ErrCodeBadNick     = "bad_nick"
	ErrCodeNickLocked  = "nick_locked"
)

// maxNickRunes is the longest display name a client may choose.
const maxNickRunes = 32

// Member is one connection in a room, as the online list shows it.
type Member struct {
	ID   string `json:"id"`
	Nick string `json:"nick,omitempty"`
}

// Event is something that happened in a room: a chat message, or a member
// joining, leaving or renaming. Events are what the hub fans out to local
// members and what a registry carries to other instances.
type Event struct {
	Kind string `json:"kind"`
	// ID is the member the event is about: the sender of a chat message.
	ID   string `json:"id"`
	Nick string `json:"nick,omitempty"`
	// Msg is the chat text; empty for presence events.
	Msg string `json:"msg,omitempty"`
	// Time is the Unix time in seconds, as a decimal string (seed format).
	Time string `json:"time,omitempty"`

	encodeOnce sync.Once
	encoded    []byte
}

// frame returns the frame that members receive for ev, encoded once however
// many members and joiners are sent it.
func (ev *Event) frame() []byte {
	ev.encodeOnce.Do(func() { ev.encoded = encodeFrame(ev) })
	return ev.encoded
}

// newChatEvent returns a chat event stamped with the current time.
func newChatEvent(from Member, msg string, now time.Time) *Event {
	return &Event{Kind: KindChat, ID: from.ID, Nick: from.Nick, Msg: msg, Time: strconv.FormatInt(now.Unix(), 10)}
}

// The frames the server sends. Field order follows the SPEC's examples.
type (
	chatFrame struct {
		FromID   string `json:"from_id"`
		Msg      string `json:"msg"`
		MsgTime  string `json:"msg_time"`
		FromNick string `json:"from_nick,omitempty"`
	}
	welcomeFrame struct {
		Msg       string `json:"msg"`
		MsgSource string `json:"msg_source"`
		ID        string `json:"id"`
		Room      string `json:"room"`
		Nick      string `json:"nick,omitempty"`
	}
	onlineFrame struct {
		Msg       string   `json:"msg"`
		MsgSource string   `json:"msg_source"`
		Event     string   `json:"event"`
		Online    []Member `json:"online"`
	}
	presenceFrame struct {
		Msg       string `json:"msg"`
		MsgSource string `json:"msg_source"`
		Event     string `json:"event"`
		ID        string `json:"id"`
		Nick      string `json:"nick,omitempty"`
	}
	errorFrame struct {
		Msg       string `json:"msg"`
		MsgSource string `json:"msg_source"`
		Error     string `json:"error"`
	}
)

const sourceServer = "server"

// encodeFrame turns an event into the frame members receive.
func encodeFrame(ev *Event) []byte {
	switch ev.Kind {
	case KindChat:
		return mustMarshal(chatFrame{FromID: ev.ID, Msg: ev.Msg, MsgTime: ev.Time, FromNick: ev.Nick})
	case KindJoin, KindLeave, KindNick:
		return mustMarshal(presenceFrame{Msg: presenceText(ev), MsgSource: sourceServer, Event: ev.Kind, ID: ev.ID, Nick: ev.Nick})
	}
	return nil
}

func presenceText(ev *Event) string {
	name := ev.ID
	switch ev.Kind {
	case KindJoin:
		if ev.Nick != "" {
			name = ev.Nick + " (" + ev.ID + ")"
		}
		return name + " joined"
	case KindLeave:
		if ev.Nick != "" {
			name = ev.Nick + " (" + ev.ID + ")"
		}
		return name + " left"
	default:
		return ev.ID + " is now " + ev.Nick
	}
}

func welcomeMessage(m Member, room string) []byte {
	return mustMarshal(welcomeFrame{Msg: "you are login as " + m.ID + " id", MsgSource: sourceServer, ID: m.ID, Room: room, Nick: m.Nick})
}

func onlineMessage(members []Member) []byte {
	if members == nil {
		members = []Member{}
	}
	return mustMarshal(onlineFrame{Msg: strconv.Itoa(len(members)) + " online", MsgSource: sourceServer, Event: "online", Online: members})
}

func errorMessage(code, reason string) []byte {
	return mustMarshal(errorFrame{Msg: reason, MsgSource: sourceServer, Error: code})
}

// mustMarshal encodes the server's own frame types, which cannot fail: they
// hold only strings and slices of strings.
func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("chatroom: encoding %T: %v", v, err))
	}
	return b
}

// inbound is a decoded client frame. Fields are kept raw so that a field of
// the wrong type is told apart from a missing one.
type inbound struct {
	Msg  json.RawMessage
	Nick json.RawMessage
}

// errNotObject reports a frame that is valid JSON but not an object.
var errNotObject = errors.New("frame is not a JSON object")

// decodeInbound parses one client text frame. The caller has checked that it
// is valid UTF-8.
func decodeInbound(data []byte) (inbound, error) {
	var in inbound
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if !json.Valid(data) {
			return in, fmt.Errorf("invalid JSON")
		}
		return in, errNotObject
	}
	// A map, not a struct: encoding/json matches struct fields without
	// regard to case, and the protocol's keys are "msg" and "nick" exactly.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return in, fmt.Errorf("invalid JSON: %w", err)
	}
	in.Msg, in.Nick = fields["msg"], fields["nick"]
	return in, nil
}

// chatText returns the message to forward, or "" when the seed's rule says
// not to forward it: missing, not a string, empty or only white space.
func (in inbound) chatText() string {
	if len(in.Msg) == 0 || in.Msg[0] != '"' {
		return ""
	}
	var s string
	if json.Unmarshal(in.Msg, &s) != nil || strings.TrimSpace(s) == "" {
		return ""
	}
	return s
}

// hasNick reports whether the frame asks for a display name.
func (in inbound) hasNick() bool { return len(in.Nick) > 0 }

// nickRequest returns the requested display name, cleaned, or an error that
// a person can read.
func (in inbound) nickRequest() (string, error) {
	var s string
	if len(in.Nick) == 0 || in.Nick[0] != '"' || json.Unmarshal(in.Nick, &s) != nil {
		return "", errors.New("nick must be a string")
	}
	return cleanNick(s)
}

// cleanNick trims a display name and checks it against the SPEC: 1 to 32
// characters, no control characters.
func cleanNick(s string) (string, error) {
	s = strings.TrimSpace(s)
	n := utf8.RuneCountInString(s)
	if n == 0 {
		return "", errors.New("nick must not be empty")
	}
	if n > maxNickRunes {
		return "", fmt.Errorf("nick must be at most %d characters", maxNickRunes)
	}
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return "", errors.New("nick must not contain control characters")
	}
	return s, nil
}

// cleanUser turns the resolved `user` template into a display name: the
// authenticated name is trusted, but control characters are dropped and it
// is cut to a length that a page can show.
func cleanUser(s string) string {
	s = strings.TrimSpace(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s))
	if utf8.RuneCountInString(s) > 64 {
		s = string([]rune(s)[:64])
	}
	return s
}

// validRoom reports whether name is 1 to 64 characters of A-Z a-z 0-9 . _ -.
func validRoom(name string) bool {
	if len(name) == 0 || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
