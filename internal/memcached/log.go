package memcached

import "time"

// The relay log: one log for the whole cluster, split into a fixed number
// of partitions (keys.go). An event of room goes to partition
// partitionOf(room): it gets the next number of the partition's counter
// and is stored at that number with its room. Every instance polls the
// partition counters, one multi-get per server and tick whatever its
// number of rooms, fetches the new entries of the partitions that moved,
// and keeps those of the rooms it hosts. So an idle instance costs
// partitions keys per tick, and a message costs one increment and one set
// (plus the room's history when history is kept) and one read per other
// instance.
const (
	// pollFast is the poll period while events flow; pollIdle after
	// quietAfter without any. The idle period bounds what an idle
	// instance costs (partitions gets per tick); the fast one bounds
	// cross-instance latency under load.
	pollFast   = 20 * time.Millisecond
	pollIdle   = 100 * time.Millisecond
	quietAfter = 3 * time.Second

	// logGapWait is how long a number that was reserved but not written
	// (its writer died, or memcached restarted) is waited for before it
	// is given up.
	logGapWait = time.Second
	// maxPerPoll bounds the entries one poll reads per partition; a
	// reader behind by up to maxBacklog catches up over several polls,
	// one further behind (a counter that jumped ahead after a restart, or
	// forged) skips to the latest jumpWindow entries.
	maxPerPoll = 256
	maxBacklog = 8192
	jumpWindow = 16
	// startWindow is how many of each partition's latest entries an
	// instance reads when it starts, for presence changes newer than the
	// snapshots.
	startWindow = 256
	// maxPartitionCounter is the highest partition counter followed.
	// Seeds are microseconds since 1970 (about 2^51 today), so a counter
	// above it is forged: reading it, a first look's window and its
	// arithmetic would wrap at 2^64, and a writer re-seeds it.
	maxPartitionCounter = uint64(1) << 62
	// maxOutbox bounds the events held while memcached is unreachable;
	// beyond it the oldest are dropped.
	maxOutbox = 4096
	// historyTTL is how long a room's history key lives after its last
	// chat message.
	historyTTL = time.Hour
	// resumeHistoryEvents is how many of a room's latest chat events its
	// history key holds at least, whatever `history` says, so that a
	// client resuming on an instance without members in the room is
	// served from what Warm loads (one get).
	resumeHistoryEvents = 64
	// maxHistoryEvents bounds the events read from a history key.
	maxHistoryEvents = 1000
)
