package memcached

import (
	"crypto/sha256"
	"encoding/hex"
	"hash/fnv"
	"strconv"

	"github.com/caddy-chatroom/chatroom/internal/chat"
)

// keySchema names every memcached key the backend uses. All of them start
// with the configured prefix; nothing outside it is ever read or written.
//
//	<prefix>id                 connection id counter (shared)
//	<prefix>nodes              index of live instances: space-separated node ids (shared)
//	<prefix>node:<node>        one instance's presence header (owned by that instance)
//	<prefix>node:<node>:<k>    chunk k of its presence snapshot (on the header's server)
//	<prefix>log:<p>            counter of relay log partition p (shared)
//	<prefix>log:<p>:<n>        entry n of partition p (on the counter's server, expires by itself)
//	<prefix>hist:<room>        the room's latest chat events, for joiners elsewhere (shared)
//	<prefix>seq:<room>         the room's chat seq counter: one order per room (on its partition's server)
type keySchema struct{ prefix string }

func (k keySchema) idCounter() string     { return k.prefix + "id" }
func (k keySchema) nodeIndex() string     { return k.prefix + "nodes" }
func (k keySchema) node(id string) string { return k.prefix + "node:" + id }
func (k keySchema) history(room string) string {
	return k.prefix + "hist:" + roomKeyPart(room)
}

// seq is the counter every instance takes a room's chat seqs from. It
// lives on the server of the room's partition, so that a room's order and
// its relay are up or down together.
func (k keySchema) seq(room string) string { return k.prefix + "seq:" + roomKeyPart(room) }

func (k keySchema) chunk(id string, i int) string {
	return k.node(id) + ":" + strconv.Itoa(i)
}

func (k keySchema) partition(p int) string { return k.prefix + "log:" + strconv.Itoa(p) }

// partitionBase is where a partition's counter records the seed it was
// last made with, so that a reader that sees the counter appear knows
// where its entries start.
func (k keySchema) partitionBase(p int) string { return k.partition(p) + ":base" }

func (k keySchema) entry(p int, n uint64) string {
	return k.partition(p) + ":" + strconv.FormatUint(n, 10)
}

// partitions is the number of relay log partitions. Every instance polls
// all their counters, so it bounds what an idle instance costs whatever its
// number of rooms (partitions per poll); more would spread the entries of a
// busy cluster thinner but cost every idle instance more. It is part of the
// cluster's wire format: every instance must use the same.
const partitions = 8

// partitionOf maps a room to its partition.
func partitionOf(room string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(room))
	return int(h.Sum32() % partitions)
}

// maxRoomKeyPart keeps the longest key (a 100-byte prefix, "hist:" and the
// room) under memcached's 250 bytes.
const maxRoomKeyPart = 64

// roomKeyPart encodes a room name for a key. Valid room names (A-Z a-z 0-9
// . _ -, at most 64) are already legal and stand as they are, so keys stay
// readable; anything else becomes "~" and a hash, which no valid name can
// collide with because "~" is not allowed in names.
func roomKeyPart(room string) string {
	if chat.ValidRoom(room) && len(room) <= maxRoomKeyPart {
		return room
	}
	sum := sha256.Sum256([]byte(room))
	return "~" + hex.EncodeToString(sum[:16])
}
