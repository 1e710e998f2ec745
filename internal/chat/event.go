// Package chat holds what a chat room is made of, apart from how it travels:
// members, the events that happen in a room, and the rules a name must
// follow. The hub, the WebSocket protocol and every cluster relay share these
// types; nothing here does I/O.
package chat

import (
	"strconv"
	"time"
)

// Event kinds. They travel between instances in a cluster relay, so their
// spelling is part of the cluster's wire format.
const (
	KindChat  = "chat"
	KindJoin  = "join"
	KindLeave = "leave"
	KindNick  = "nick"
)

// Member is one connection in a room, as the online list shows it.
type Member struct {
	ID string `json:"id"`
	// Nick is the display name: the authenticated name when User is set,
	// else the name the member chose, if any.
	Nick string `json:"nick,omitempty"`
	// User is the authenticated name from the handler's `user` template;
	// a name a member chose never appears here.
	User string `json:"user,omitempty"`
}

// Event is something that happened in a room: a chat message, or a member
// joining, leaving or renaming. It is plain data: the hub encodes the frame
// members receive, and a relay carries the event to other instances.
type Event struct {
	Kind string `json:"kind"`
	// ID is the member the event is about: the sender of a chat message.
	ID   string `json:"id"`
	Nick string `json:"nick,omitempty"`
	// User is the member's authenticated name, when it has one.
	User string `json:"user,omitempty"`
	// Msg is the chat text; empty for presence events.
	Msg string `json:"msg,omitempty"`
	// Time is the Unix time in seconds, as a decimal string (seed format).
	Time string `json:"time,omitempty"`
	// Seq orders the chat events of a room across the cluster (resume);
	// 0 where none was given.
	Seq uint64 `json:"seq,omitempty"`
}

// NewChat returns a chat event from member from, stamped with now.
func NewChat(from Member, msg string, now time.Time) *Event {
	return &Event{Kind: KindChat, ID: from.ID, Nick: from.Nick, User: from.User, Msg: msg, Time: strconv.FormatInt(now.Unix(), 10)}
}

// NewPresence returns a join, leave or nick event about member m.
func NewPresence(kind string, m Member) *Event {
	return &Event{Kind: kind, ID: m.ID, Nick: m.Nick, User: m.User}
}

// Member returns the member an event is about, as the online list shows it.
func (ev *Event) Member() Member {
	return Member{ID: ev.ID, Nick: ev.Nick, User: ev.User}
}

// MaxRoomLen is the longest room name, in bytes.
const MaxRoomLen = 64

// ValidRoom reports whether name is a room name: 1 to MaxRoomLen characters
// of A-Z a-z 0-9 . _ -. The handler refuses any other before the upgrade,
// and a relay drops an event of any other read back from shared storage.
func ValidRoom(name string) bool {
	if len(name) == 0 || len(name) > MaxRoomLen {
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

// IDLess orders member ids as the online list shows them: decimal ids
// numerically, anything else after them.
func IDLess(a, b string) bool {
	an, aerr := strconv.ParseUint(a, 10, 64)
	bn, berr := strconv.ParseUint(b, 10, 64)
	if aerr == nil && berr == nil {
		return an < bn
	}
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}
