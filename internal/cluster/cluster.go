// Package cluster is the seam between the hub of one instance and a relay
// that joins it to other instances: what the hub offers a relay (Host),
// what a relay needs from this instance's history (History), and the
// presence bookkeeping any relay needs (View), as plain code that a
// memcached, NATS or Redis backend can share. Nothing here does I/O.
package cluster

import (
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// Host is the local side of a relay: the hub. A relay hands it what
// happened on other instances. (Not "Handler": that is the Caddy module.)
type Host interface {
	// DeliverWith runs update under the lock that orders room's events,
	// then fans the events update returns out to the room's local members.
	// A relay records a remote event (history, presence) inside update, so
	// that a member joining at that moment finds the event either in what
	// it is shown on joining or live, never both or neither. When the room
	// has no local member, update still runs.
	DeliverWith(room string, update func() []*chat.Event)
}

// History is this instance's copy of each room's chat history, which a
// relay keeps warm with the chat events of other instances.
type History interface {
	// Publish records a chat event of room, in the room's order, with
	// the Seq the relay gave it.
	Publish(room string, ev *chat.Event)
	// History returns at most n of the room's latest chat events, oldest
	// first.
	History(room string, n int) []*chat.Event
	// Replace sets the room's history to events, oldest first: what a
	// relay loaded from the cluster for a room this instance had no
	// member in. through is the room's seq counter when it was loaded
	// (0 when unknown): messages up to it that events lack are missing
	// here.
	Replace(room string, events []*chat.Event, through uint64)
	// KeepHistory raises the number of chat events kept per room to at
	// least n.
	KeepHistory(n int)
	// Kept is how many chat events are kept per room for joiners (the
	// `history` setting); 0 keeps none for them.
	Kept() int
	// Since returns the held chat events of room with a seq above after,
	// and whether they are all the events after it (a resume).
	Since(room string, after uint64) ([]*chat.Event, bool)
	// KeepWindow raises how long chat events are kept for resumes.
	KeepWindow(d time.Duration)
	// Window is how long chat events are kept for resumes.
	Window() time.Duration
	// MarkGap records that a relay may have lost chat events of room
	// with seqs up to through, so that a resume from before it is not
	// called complete; through 0 means up to the next one recorded.
	MarkGap(room string, through uint64)
}
