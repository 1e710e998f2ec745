package main

// The soak's clients: stayers, connected for the whole run, chat at a
// steady rate and check that they receive every message of every other
// stayer in order; churners connect to a random room, chat a little and
// leave, abruptly or politely, over and over.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// ioWait bounds every read and write of a client.
const ioWait = 30 * time.Second

var dialer = websocket.Dialer{HandshakeTimeout: ioWait}

// inFrame is the part of a server frame the soak looks at.
type inFrame struct {
	ID     string `json:"id"`
	FromID string `json:"from_id"`
	Msg    string `json:"msg"`
	Event  string `json:"event"`
	Error  string `json:"error"`
}

// login dials url and reads the welcome and the online list.
func login(url string) (*websocket.Conn, string, error) {
	ws, _, err := dialer.Dial(url, nil)
	if err != nil {
		return nil, "", fmt.Errorf("dial: %w", err)
	}
	var welcome inFrame
	for i := range 2 {
		_ = ws.SetReadDeadline(time.Now().Add(ioWait))
		_, data, err := ws.ReadMessage()
		if err != nil {
			ws.Close()
			return nil, "", fmt.Errorf("reading frame %d after connecting: %w", i, err)
		}
		if i == 0 {
			if err := json.Unmarshal(data, &welcome); err != nil || welcome.ID == "" {
				ws.Close()
				return nil, "", fmt.Errorf("first frame %q is not a welcome", data)
			}
		}
	}
	_ = ws.SetReadDeadline(time.Time{})
	return ws, welcome.ID, nil
}

// stayer is a client that stays for the whole soak.
type stayer struct {
	index int
	id    string
	ws    *websocket.Conn

	sent atomic.Int64 // chat messages sent, before the end marker

	mu       sync.Mutex
	next     map[int]int // per other stayer: the next sequence number expected
	ended    map[int]bool
	problems []string
	received int64
	done     chan struct{} // closed once every other stayer's end marker came
	others   int
}

// stayerText is the text of a stayer's message seq, or its end marker
// (seq < 0) carrying how many it sent.
func stayerText(index, seq int, total int64) string {
	if seq < 0 {
		return fmt.Sprintf("soak %d end %d", index, total)
	}
	return fmt.Sprintf("soak %d %d", index, seq)
}

// read consumes frames until the connection ends, checking the messages
// of other stayers: each in order, none missing, none twice.
func (s *stayer) read(byID map[string]int) {
	for {
		_, data, err := s.ws.ReadMessage()
		if err != nil {
			s.mu.Lock()
			select {
			case <-s.done:
			default:
				s.problems = append(s.problems, fmt.Sprintf("stayer %d: connection ended before every end marker: %v", s.index, err))
			}
			s.mu.Unlock()
			return
		}
		var f inFrame
		if json.Unmarshal(data, &f) != nil {
			s.note("stayer %d: frame %q is not JSON", s.index, data)
			continue
		}
		if f.Error != "" {
			s.note("stayer %d: error frame %q", s.index, data)
			continue
		}
		from, ok := byID[f.FromID]
		if !ok || !strings.HasPrefix(f.Msg, "soak ") {
			continue // a churner's message, or a presence event
		}
		s.check(from, f.Msg)
	}
}

func (s *stayer) check(from int, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fields := strings.Fields(text)
	if len(fields) == 4 && fields[2] == "end" {
		total, _ := strconv.Atoi(fields[3])
		if s.next[from] != total {
			s.problems = append(s.problems, fmt.Sprintf("stayer %d: got %d of stayer %d's %d messages", s.index, s.next[from], from, total))
		}
		if !s.ended[from] {
			s.ended[from] = true
			if len(s.ended) == s.others {
				close(s.done)
			}
		}
		return
	}
	seq, err := strconv.Atoi(fields[len(fields)-1])
	if err != nil || len(fields) != 3 {
		s.problems = append(s.problems, fmt.Sprintf("stayer %d: bad message %q", s.index, text))
		return
	}
	if seq != s.next[from] {
		s.problems = append(s.problems, fmt.Sprintf("stayer %d: from stayer %d got message %d, want %d", s.index, from, seq, s.next[from]))
	}
	s.next[from] = seq + 1
	s.received++
}

func (s *stayer) note(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.problems) < 20 {
		s.problems = append(s.problems, fmt.Sprintf(format, args...))
	}
}

// chat sends a message every interval until stop is closed, then the end
// marker.
func (s *stayer) chat(interval time.Duration, stop <-chan struct{}) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-stop:
			return s.write(stayerText(s.index, -1, s.sent.Load()))
		case <-tick.C:
		}
		if err := s.write(stayerText(s.index, seq, 0)); err != nil {
			return err
		}
		s.sent.Add(1)
	}
}

func (s *stayer) write(text string) error {
	data, _ := json.Marshal(map[string]string{"msg": text})
	_ = s.ws.SetWriteDeadline(time.Now().Add(ioWait))
	if err := s.ws.WriteMessage(websocket.TextMessage, data); err != nil {
		return fmt.Errorf("stayer %d: write: %w", s.index, err)
	}
	return nil
}

// churnStats counts what the churners did.
type churnStats struct {
	connections atomic.Int64
	messages    atomic.Int64
	failures    atomic.Int64
	start       time.Time // of the soak, to date the failures
	mu          sync.Mutex
	firstErrors []string
	failedAt    []time.Duration
}

func (c *churnStats) fail(err error) {
	c.failures.Add(1)
	at := time.Since(c.start)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.failedAt) < 100000 {
		c.failedAt = append(c.failedAt, at)
	}
	if len(c.firstErrors) < 5 {
		c.firstErrors = append(c.firstErrors, fmt.Sprintf("at %.1fs: %v", at.Seconds(), err))
	}
}

// failuresOutside counts the failures outside [from, to).
func (c *churnStats) failuresOutside(from, to time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, at := range c.failedAt {
		if at < from || at >= to {
			n++
		}
	}
	return n
}

// churn connects to a random room, sends up to 5 messages, stays up to
// 1.5 s and leaves, until stop is closed.
func churn(baseURL string, rooms []string, stats *churnStats, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		if err := churnOnce(baseURL, rooms, stats, stop); err != nil {
			stats.fail(err)
			// Back off a little so that a failing server is not hammered.
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func churnOnce(baseURL string, rooms []string, stats *churnStats, stop <-chan struct{}) error {
	ws, _, err := login(baseURL + "?room=" + rooms[rand.IntN(len(rooms))])
	if err != nil {
		return err
	}
	stats.connections.Add(1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	defer func() {
		if rand.IntN(2) == 0 {
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
			select {
			case <-readDone:
			case <-time.After(ioWait):
			}
		}
		ws.Close()
		<-readDone
	}()
	for range rand.IntN(6) {
		data, _ := json.Marshal(map[string]string{"msg": "churn " + strconv.Itoa(rand.IntN(1000))})
		_ = ws.SetWriteDeadline(time.Now().Add(ioWait))
		if err := ws.WriteMessage(websocket.TextMessage, data); err != nil {
			if errors.Is(err, websocket.ErrCloseSent) {
				return nil
			}
			return fmt.Errorf("churner write: %w", err)
		}
		stats.messages.Add(1)
	}
	select {
	case <-stop:
	case <-time.After(time.Duration(rand.IntN(1500)) * time.Millisecond):
	}
	return nil
}
