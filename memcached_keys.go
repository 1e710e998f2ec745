package chatroom

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// keySchema names every memcached key the registry uses. All of them start
// with the configured prefix; nothing outside it is ever read or written.
//
//	<prefix>id                 connection id counter (shared)
//	<prefix>nodes              index of live instances: space-separated node ids (shared)
//	<prefix>node:<node>        one instance's presence snapshot (owned by that instance)
//	<prefix>seq:<room>         the room log's sequence counter (shared)
//	<prefix>msg:<room>:<n>     entry n of the room log (shared, expires by itself)
type keySchema struct{ prefix string }

func (k keySchema) idCounter() string            { return k.prefix + "id" }
func (k keySchema) nodeIndex() string            { return k.prefix + "nodes" }
func (k keySchema) node(id string) string        { return k.prefix + "node:" + id }
func (k keySchema) seq(room string) string       { return k.prefix + "seq:" + roomKeyPart(room) }
func (k keySchema) msgPrefix(room string) string { return k.prefix + "msg:" + roomKeyPart(room) + ":" }

func (k keySchema) msg(room string, n uint64) string {
	return k.msgPrefix(room) + strconv.FormatUint(n, 10)
}

// maxRoomKeyPart keeps the longest key (a 100-byte prefix, "msg:", the
// room, ":" and a 20-digit number) under memcached's 250 bytes.
const maxRoomKeyPart = 64

// roomKeyPart encodes a room name for a key. Valid room names (SPEC §2:
// A-Z a-z 0-9 . _ -, at most 64) are already legal and stand as they are,
// so keys stay readable; anything else becomes "~" and a hash, which no
// valid name can collide with because "~" is not allowed in names.
func roomKeyPart(room string) string {
	if validRoom(room) && len(room) <= maxRoomKeyPart {
		return room
	}
	sum := sha256.Sum256([]byte(room))
	return "~" + hex.EncodeToString(sum[:16])
}
