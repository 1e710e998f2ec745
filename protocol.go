package chatroom

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// Error codes of refused frames (docs/protocol.md, "Errors").
const (
	ErrCodeInvalidJSON = "invalid_json"
	ErrCodeRateLimited = "rate_limited"
	ErrCodeBadNick     = "bad_nick"
	ErrCodeNickLocked  = "nick_locked"
	// ErrCodeMessageTooBig: the message is within max_message_size here
	// but over what another instance of the cluster accepts; it went to
	// nobody.
	ErrCodeMessageTooBig = "message_too_big"
)

// The frames the server sends. Field order follows the examples of
// docs/protocol.md.
type (
	chatFrame struct {
		FromID   string `json:"from_id"`
		Msg      string `json:"msg"`
		MsgTime  string `json:"msg_time"`
		Seq      string `json:"seq,omitempty"`
		FromNick string `json:"from_nick,omitempty"`
		// FromUser is set only by the handler's `user` template, never by
		// a nick the sender chose.
		FromUser string `json:"from_user,omitempty"`
	}
	welcomeFrame struct {
		Msg       string `json:"msg"`
		MsgSource string `json:"msg_source"`
		ID        string `json:"id"`
		Room      string `json:"room"`
		Nick      string `json:"nick,omitempty"`
		User      string `json:"user,omitempty"`
	}
	onlineFrame struct {
		Msg       string        `json:"msg"`
		MsgSource string        `json:"msg_source"`
		Event     string        `json:"event"`
		Online    []chat.Member `json:"online"`
		Count     string        `json:"count,omitempty"` // a big room's size; Online is then a part of it
	}
	countFrame struct {
		Msg       string `json:"msg"`
		MsgSource string `json:"msg_source"`
		Event     string `json:"event"`
		Count     string `json:"count"`
	}
	presenceFrame struct {
		Msg       string `json:"msg"`
		MsgSource string `json:"msg_source"`
		Event     string `json:"event"`
		ID        string `json:"id"`
		Nick      string `json:"nick,omitempty"`
		User      string `json:"user,omitempty"`
	}
	errorFrame struct {
		Msg       string `json:"msg"`
		MsgSource string `json:"msg_source"`
		Error     string `json:"error"`
	}
)

const sourceServer = "server"

// encodeFrame turns an event into the frame members receive.
func encodeFrame(ev *chat.Event) []byte {
	switch ev.Kind {
	case chat.KindChat:
		return mustMarshal(chatFrame{FromID: ev.ID, Msg: ev.Msg, MsgTime: ev.Time, Seq: seqString(ev.Seq), FromNick: ev.Nick, FromUser: ev.User})
	case chat.KindJoin, chat.KindLeave, chat.KindNick:
		return mustMarshal(presenceFrame{Msg: presenceText(ev), MsgSource: sourceServer, Event: ev.Kind, ID: ev.ID, Nick: ev.Nick, User: ev.User})
	}
	return nil
}

// presenceText is the readable msg of a presence frame. Names are quoted
// (with Go's escaping) so that no name reads as server text: a nick such as
// `bob" left, "eve` cannot forge a second event in the line.
func presenceText(ev *chat.Event) string {
	switch ev.Kind {
	case chat.KindJoin:
		return presenceWho(ev) + " joined"
	case chat.KindLeave:
		return presenceWho(ev) + " left"
	default:
		return ev.ID + " is now " + strconv.Quote(ev.Nick)
	}
}

// presenceWho names the member of a presence event: its id, and its name
// marked as authenticated or chosen.
func presenceWho(ev *chat.Event) string {
	switch {
	case ev.User != "":
		return ev.ID + " (user " + strconv.Quote(ev.User) + ")"
	case ev.Nick != "":
		return ev.ID + " (" + strconv.Quote(ev.Nick) + ")"
	}
	return ev.ID
}

func welcomeMessage(m chat.Member, room string) []byte {
	return mustMarshal(welcomeFrame{Msg: "you are login as " + m.ID + " id", MsgSource: sourceServer, ID: m.ID, Room: room, Nick: m.Nick, User: m.User})
}

func onlineMessage(members []chat.Member) []byte {
	if members == nil {
		members = []chat.Member{}
	}
	return mustMarshal(onlineFrame{Msg: strconv.Itoa(len(members)) + " online", MsgSource: sourceServer, Event: "online", Online: members})
}

// bigOnlineMessage is the online frame of a room bigger than its
// presence_limit: total members, of which list (a JSON array of members,
// encoded once for many joiners) shows some. The same fields as
// onlineMessage's, plus count.
func bigOnlineMessage(list []byte, total int) []byte {
	n := strconv.Itoa(total)
	b := make([]byte, 0, len(list)+2*len(n)+96)
	b = append(b, `{"msg":"`...)
	b = append(b, n...)
	b = append(b, ` online","msg_source":"server","event":"online","online":`...)
	b = append(b, list...)
	b = append(b, `,"count":"`...)
	b = append(b, n...)
	return append(b, `"}`...)
}

// countMessage tells the members of a big room its size.
func countMessage(total int) []byte {
	n := strconv.Itoa(total)
	return mustMarshal(countFrame{Msg: n + " online", MsgSource: sourceServer, Event: "count", Count: n})
}

func errorMessage(code, reason string) []byte {
	return mustMarshal(errorFrame{Msg: reason, MsgSource: sourceServer, Error: code})
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

// mustMarshal encodes the server's own frame types, which cannot fail: they
// hold only strings, booleans, numbers and slices of them.
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
	return chat.CleanName(s)
}
