package memcached

import (
	"strconv"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/chat"
	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

// TestIdleCostIndependentOfRooms counts what two idle instances ask
// memcached for (its cmd_get, which counts every key of a multi-get) per
// poll: the same with 1 room and with 2,000, and no more than the partition
// counters plus the heartbeat's share. The per-room design read every
// hosted room's counter on every poll.
func TestIdleCostIndependentOfRooms(t *testing.T) {
	skipShort(t)
	for _, rooms := range []int{1, 2000} {
		mc, a, b := twoBackends(t, "idle"+strconv.Itoa(rooms)+":", 3*time.Second)
		for r := 0; r < rooms; r++ {
			room := "q" + strconv.Itoa(r)
			a.Publish(room, &chat.Event{Kind: chat.KindJoin, ID: strconv.Itoa(2*r + 1)})
			b.Publish(room, &chat.Event{Kind: chat.KindJoin, ID: strconv.Itoa(2*r + 2)})
		}
		testenv.AwaitCondition(t, "each instance sees the other's members", func() bool {
			return a.RemoteCount("q"+strconv.Itoa(rooms-1)) == 1 && b.RemoteCount("q"+strconv.Itoa(rooms-1)) == 1
		})
		// Quiet: the polls slow down, the snapshots stop changing.
		a.awaitBeats(t, 2)
		b.awaitBeats(t, 2)
		testenv.AwaitCondition(t, "idle polling", func() bool { return !a.busy() && !b.busy() })
		before := mc.Stats()["cmd_get"]
		pa, pb := a.polls.Load(), b.polls.Load()
		a.awaitPolls(t, 30)
		b.awaitPolls(t, 30)
		gets := mc.Stats()["cmd_get"] - before
		polls := a.polls.Load() - pa + b.polls.Load() - pb
		perPoll := float64(gets) / float64(polls)
		t.Logf("%d rooms: %d gets over %d polls of two idle instances: %.1f per poll", rooms, gets, polls, perPoll)
		// The partition counters, and the heartbeat (index, the other's
		// header) spread over its polls.
		if limit := float64(partitions) + 2; perPoll > limit {
			t.Errorf("%d rooms: %.1f gets per poll, want at most %.0f whatever the number of rooms", rooms, perPoll, limit)
		}
	}
}

// busy reports whether the poll runs at its fast period.
func (r *testBackend) busy() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Since(r.lastActivity) < quietAfter
}
