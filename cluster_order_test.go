package chatroom

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
	"github.com/gorilla/websocket"
)

// One order per room: members on several instances speak at once, and
// every member, on every instance, must receive the room's messages in the
// same order with the same seqs, each once. Before, seqs came from each
// instance's clock and a relayed message "older" than a local one was
// skipped: two speakers on two instances lost 30 to 80 % of each other's
// messages.

// orderSite lets speakers go as fast as the test drives them.
const orderSite = "rate_limit 10000 1s\n\t\tsend_queue 4096"

// heard is one chat frame as a member received it.
type heard struct {
	from, msg string
	seq       uint64
}

// collectChats reads c's frames until it has n chat messages, skipping
// other frames, and fails after waitLong without one.
func collectChats(t *testing.T, c *wsClient, n int) []heard {
	t.Helper()
	var out []heard
	for len(out) < n {
		select {
		case data := <-c.frames:
			var f frame
			if err := json.Unmarshal(data, &f); err != nil {
				t.Fatalf("%s: frame is not JSON: %q", c.name, data)
			}
			if f.str("msg_source") == "server" || f.str("event") != "" || isProbe(f) {
				continue
			}
			seq, err := strconv.ParseUint(f.str("seq"), 10, 64)
			if err != nil {
				t.Fatalf("%s: chat frame without a usable seq: %s", c.name, data)
			}
			out = append(out, heard{from: f.str("from_id"), msg: f.str("msg"), seq: seq})
		case <-c.closed:
			t.Fatalf("%s: closed after %d of %d messages: %v", c.name, len(out), n, c.err)
		case <-time.After(waitLong):
			t.Fatalf("%s: %d of %d messages, then nothing for %v", c.name, len(out), n, waitLong)
		}
	}
	return out
}

// speak sends n messages from c, one every gap (0: as fast as it can),
// starting when start is closed; it reports a write error on errs.
func speak(c *wsClient, tag string, n int, gap time.Duration, start <-chan struct{}, errs chan<- error) {
	<-start
	for i := range n {
		data, _ := json.Marshal(map[string]any{"msg": fmt.Sprintf("%s %d", tag, i)})
		c.wmu.Lock()
		_ = c.conn.SetWriteDeadline(time.Now().Add(waitLong))
		err := c.conn.WriteMessage(websocket.TextMessage, data)
		c.wmu.Unlock()
		if err != nil {
			errs <- fmt.Errorf("%s: write %d: %w", tag, i, err)
			return
		}
		if gap > 0 {
			time.Sleep(gap) // pacing a sender, not waiting for an event
		}
	}
	errs <- nil
}

// checkOneOrder fails unless every sequence is the same, with seqs rising
// and each message once.
func checkOneOrder(t *testing.T, names []string, got [][]heard) {
	t.Helper()
	ref := got[0]
	seen := make(map[string]bool, len(ref))
	for i, h := range ref {
		if seen[h.msg] {
			t.Fatalf("%s received %q twice", names[0], h.msg)
		}
		seen[h.msg] = true
		if i > 0 && h.seq <= ref[i-1].seq {
			t.Fatalf("%s: seq %d of %q is not above %d of %q", names[0], h.seq, h.msg, ref[i-1].seq, ref[i-1].msg)
		}
	}
	for k := 1; k < len(got); k++ {
		if len(got[k]) != len(ref) {
			t.Fatalf("%s received %d messages, %s %d", names[k], len(got[k]), names[0], len(ref))
		}
		for i := range ref {
			if got[k][i] != ref[i] {
				t.Fatalf("message %d: %s received %+v, %s %+v: two orders of one room", i, names[k], got[k][i], names[0], ref[i])
			}
		}
	}
}

// subsequence reports whether a speaker's sequence (the room's order
// without its own messages) is the listener's with them taken out.
func checkSpeakerOrder(t *testing.T, name, own string, got, ref []heard) {
	t.Helper()
	var want []heard
	for _, h := range ref {
		if h.from != own {
			want = append(want, h)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%s received %d of the others' messages, want %d", name, len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s: message %d is %+v, the room's order has %+v", name, i, got[i], want[i])
		}
	}
}

func TestClusterConcurrentSpeakersOneOrder(t *testing.T) {
	_, a, b := startTwoInstances(t, orderSite)
	for _, tc := range []struct {
		name string
		n    int
		gap  time.Duration
	}{
		{"burst", 150, 0},
		{"paced", 30, 20 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			room := "/ws?room=order-" + tc.name
			sa, sidA := connect(t, a.url("ws", room))
			sb, sidB := connect(t, b.url("ws", room))
			la, _ := connect(t, a.url("ws", room))
			lb, _ := connect(t, b.url("ws", room))
			// Everyone sees everyone before anyone speaks.
			crossesWithin(t, sa, sidA, lb, tc.name+" a→b")
			crossesWithin(t, sb, sidB, la, tc.name+" b→a")
			drain(sa, sb, la, lb)

			start := make(chan struct{})
			errs := make(chan error, 2)
			go speak(sa, "a", tc.n, tc.gap, start, errs)
			go speak(sb, "b", tc.n, tc.gap, start, errs)
			close(start)
			var gotA, gotB, gotSA, gotSB []heard
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); gotSA = collectChatsFrom(t, sa, tc.n, "b") }()
			go func() { defer wg.Done(); gotSB = collectChatsFrom(t, sb, tc.n, "a") }()
			gotA = collectChats(t, la, 2*tc.n)
			gotB = collectChats(t, lb, 2*tc.n)
			wg.Wait()
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			checkOneOrder(t, []string{"the listener on instance 1", "the listener on instance 2"}, [][]heard{gotA, gotB})
			checkSpeakerOrder(t, "the speaker on instance 1", sidA, gotSA, gotA)
			checkSpeakerOrder(t, "the speaker on instance 2", sidB, gotSB, gotA)
		})
	}
}

// collectChatsFrom is collectChats for a speaker, which receives only the
// other speaker's messages (tagged tag), in a goroutine: it reports
// through t.Error.
func collectChatsFrom(t *testing.T, c *wsClient, n int, tag string) []heard {
	var out []heard
	deadline := time.After(waitLong)
	for len(out) < n {
		select {
		case data := <-c.frames:
			var f frame
			if json.Unmarshal(data, &f) != nil || f.str("msg_source") == "server" || f.str("event") != "" || isProbe(f) {
				continue
			}
			seq, _ := strconv.ParseUint(f.str("seq"), 10, 64)
			if !strings.HasPrefix(f.str("msg"), tag+" ") {
				t.Errorf("%s: received %q, not the other speaker's", c.name, f.str("msg"))
			}
			out = append(out, heard{from: f.str("from_id"), msg: f.str("msg"), seq: seq})
		case <-deadline:
			t.Errorf("%s: %d of %d of the other speaker's messages within %v", c.name, len(out), n, waitLong)
			return out
		}
	}
	return out
}

// isProbe reports whether f is one of crossesWithin's probes, some of
// which may still arrive after the speakers start.
func isProbe(f frame) bool { return strings.Contains(f.str("msg"), " probe ") }

// drain throws away the frames the clients have received so far.
func drain(clients ...*wsClient) {
	for _, c := range clients {
		for {
			select {
			case <-c.frames:
				continue
			default:
			}
			break
		}
	}
}

func TestClusterThreeInstancesTwoBurstingSenders(t *testing.T) {
	mc, a, b := startTwoInstances(t, orderSite)
	c := startCaddyCluster(t, orderSite, mc.Addr)
	const room, n = "/ws?room=three", 150
	sa, sidA := connect(t, a.url("ws", room))
	sb, sidB := connect(t, b.url("ws", room))
	la, _ := connect(t, a.url("ws", room))
	lb, _ := connect(t, b.url("ws", room))
	lc, _ := connect(t, c.url("ws", room))
	crossesWithin(t, sa, sidA, lc, "a→c")
	crossesWithin(t, sb, sidB, lc, "b→c")
	crossesWithin(t, sa, sidA, lb, "a→b")
	crossesWithin(t, sb, sidB, la, "b→a")
	drain(sa, sb, la, lb, lc)

	start := make(chan struct{})
	errs := make(chan error, 2)
	go speak(sa, "a", n, 0, start, errs)
	go speak(sb, "b", n, 0, start, errs)
	close(start)
	got := [][]heard{collectChats(t, lc, 2*n), collectChats(t, la, 2*n), collectChats(t, lb, 2*n)}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	checkOneOrder(t, []string{"the member on instance 3", "the listener on instance 1", "the listener on instance 2"}, got)
}

// A member drops on one instance and resumes on another with its last
// seq while members on both keep talking: it gets every message after
// that seq once, in the room's order, and complete: true.
func TestClusterResumeAcrossInstancesUnderTalk(t *testing.T) {
	_, a, b := startTwoInstances(t, orderSite)
	const room, n = "/ws?room=resume", 60
	sa, sidA := connect(t, a.url("ws", room))
	sb, sidB := connect(t, b.url("ws", room))
	lb, _ := connect(t, b.url("ws", room))
	m, _ := connect(t, a.url("ws", room))
	crossesWithin(t, sa, sidA, lb, "a→b")
	crossesWithin(t, sb, sidB, m, "b→a")
	drain(sa, sb, lb, m)

	start := make(chan struct{})
	errs := make(chan error, 2)
	go speak(sa, "a", n, 5*time.Millisecond, start, errs)
	go speak(sb, "b", n, 5*time.Millisecond, start, errs)
	close(start)
	before := collectChats(t, m, n/2) // it hears half, then drops
	_ = m.conn.Close()
	last := before[len(before)-1].seq
	r := dial(t, b.url("ws", room+"&since="+strconv.FormatUint(last, 10)), nil)
	r.name = "the member resumed on instance 2"
	r.login()
	var replay []heard
	complete := false
	for done := false; !done; {
		f := r.next()
		switch {
		case f.str("event") == "resumed":
			complete, done = f["complete"] == true, true
		case f.str("msg_source") == "server" || f.str("event") != "" || isProbe(f):
		default:
			seq, _ := strconv.ParseUint(f.str("seq"), 10, 64)
			replay = append(replay, heard{from: f.str("from_id"), msg: f.str("msg"), seq: seq})
		}
	}
	if !complete {
		t.Fatal("resume across instances said complete: false with no fault")
	}
	after := collectChats(t, r, 2*n-len(before)-len(replay))
	ref := collectChats(t, lb, 2*n)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	joined := append(append(append([]heard(nil), before...), replay...), after...)
	checkOneOrder(t, []string{"the listener on instance 2", "the member that resumed"}, [][]heard{ref, joined})
}

// The limit that travels between instances is the largest
// max_message_size of the handlers on a registry, whichever handler made
// it: a handler with a larger limit, added by a reload or listed in the
// same config, gets its big messages to the other instances. Before, the
// backend kept the limit of the handler that made it, and the others
// rejected a 20 KB message as a malformed relay entry.
func TestClusterMessageLimitIsTheLargestHandlers(t *testing.T) {
	mc := testenv.StartMemcached(t)
	handler := func(path, extra string) string {
		return fmt.Sprintf("\tchatroom %s {\n\t\tmemcached %s\n\t\troom {query.room}\n\t\t%s\n\t}\n", path, mc.Addr, extra)
	}
	small := "\troot * {{root}}\n" + handler("/ws", "") + "\tfile_server"
	both := "\troot * {{root}}\n" + handler("/ws2", "max_message_size 64KiB") + handler("/ws", "") + "\tfile_server"
	reloaded := []*caddyProc{startCaddy(t, small), startCaddy(t, small)}
	for _, p := range reloaded {
		p.reload(both)
	}
	fresh := []*caddyProc{startCaddy(t, both), startCaddy(t, both)}
	smallFirst := "\troot * {{root}}\n" + handler("/ws", "") + handler("/ws2", "max_message_size 64KiB") + "\tfile_server"
	freshOther := []*caddyProc{startCaddy(t, smallFirst), startCaddy(t, smallFirst)}
	for _, tc := range []struct {
		name  string
		procs []*caddyProc
	}{{"added by a reload", reloaded}, {"in the first config", fresh}, {"listed second", freshOther}} {
		t.Run(tc.name, func(t *testing.T) {
			room := "/ws2?room=big-" + strings.Fields(tc.name)[0]
			a, aid := connect(t, tc.procs[0].url("ws", room))
			b, _ := connect(t, tc.procs[1].url("ws", room))
			crossesWithin(t, a, aid, b, tc.name)
			for _, size := range []int{20_000, 60_000} {
				text := strings.Repeat("b", size)
				a.send(map[string]any{"msg": text})
				b.await(fmt.Sprintf("the %d-byte message on the other instance", size), func(f frame) bool { return f.str("msg") == text })
			}
		})
	}
}

// An instance accepts from the relay at most its own largest
// max_message_size. A sender on another instance with a larger limit is
// told, with message_too_big, that its message is over what the cluster
// accepts, and the message goes to nobody: before, it reached the
// sender's instance only, and the other instance rejected it without a
// word to anyone.
func TestClusterSenderToldOfASmallerLimitElsewhere(t *testing.T) {
	mc := testenv.StartMemcached(t)
	handler := func(path, extra string) string {
		return fmt.Sprintf("\tchatroom %s {\n\t\tmemcached %s\n\t\troom {query.room}\n\t\tttl 3s\n\t\t%s\n\t}\n", path, mc.Addr, extra)
	}
	big := startCaddy(t, "\troot * {{root}}\n"+handler("/ws2", "max_message_size 64KiB")+"\tfile_server")
	small := startCaddy(t, "\troot * {{root}}\n"+handler("/ws", "")+"\tfile_server")
	a, aid := connect(t, big.url("ws", "/ws2?room=limits"))
	b, _ := connect(t, small.url("ws", "/ws?room=limits"))
	crossesWithin(t, a, aid, b, "limits")
	text := strings.Repeat("z", 20_000)
	deadline := time.Now().Add(waitLong)
	for told := false; !told; {
		if time.Now().After(deadline) {
			t.Fatal("the sender of a message over the other instance's limit was never told")
		}
		// Until the big instance has read the other's presence header,
		// the message goes out and is rejected there.
		a.send(map[string]any{"msg": text})
		select {
		case data := <-a.frames:
			var f frame
			_ = json.Unmarshal(data, &f)
			told = f.str("error") == ErrCodeMessageTooBig && strings.Contains(f.str("msg"), "8192")
		case <-time.After(250 * time.Millisecond):
		}
	}
	a.send(map[string]any{"msg": "small enough"})
	b.await("the next message, within every limit", func(f frame) bool { return f.str("msg") == "small enough" })
}
