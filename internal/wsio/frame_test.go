package wsio

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestTextFrameLengths writes frames at each boundary of the length
// encoding (7, 16 and 64 bits) and of the batch buffer, and reads them back
// with gorilla's client, which checks every header.
func TestTextFrameLengths(t *testing.T) {
	c, client := upgradePair(t)
	sizes := []int{0, 1, 125, 126, 127, 0xffff, 0x10000, maxBatchBytes + 1, 200_000}
	var frames []*Frame
	for _, n := range sizes {
		f := NewTextFrame([]byte(strings.Repeat("é", n/2) + strings.Repeat("a", n%2)))
		if got := len(f.Payload()); got != n {
			t.Fatalf("payload of %d bytes: Payload() has %d", n, got)
		}
		frames = append(frames, f)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.WriteFrames(frames, false) }() // the client reads as it goes
	_ = client.SetReadDeadline(time.Now().Add(testWait))
	for i, f := range frames {
		kind, data, err := client.ReadMessage()
		if err != nil || kind != websocket.TextMessage || !bytes.Equal(data, f.Payload()) {
			t.Fatalf("frame %d (%d bytes): read kind %d, %d bytes, %v", i, sizes[i], kind, len(data), err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestNoDataFrameAfterClose: once gorilla has answered the client's close,
// a data frame must not follow it; WriteFrames refuses as gorilla would.
func TestNoDataFrameAfterClose(t *testing.T) {
	c, client := upgradePair(t)
	bye := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")
	if err := client.WriteControl(websocket.CloseMessage, bye, time.Now().Add(testWait)); err != nil {
		t.Fatal(err)
	}
	_ = c.WS().SetReadDeadline(time.Now().Add(testWait))
	if _, _, err := c.WS().ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("server read %v, want the client's close", err)
	}
	err := c.WriteFrames([]*Frame{NewTextFrame([]byte("too late"))}, false)
	if !errors.Is(err, websocket.ErrCloseSent) {
		t.Fatalf("WriteFrames after the close reply: %v, want ErrCloseSent", err)
	}
	_ = client.SetReadDeadline(time.Now().Add(testWait))
	if _, data, err := client.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("client read %q %v, want only the close reply", data, err)
	}
}

// TestHandshakeWaitsForFirstFrames: the handshake response is held in the
// connection's batch until the first write, so that both go out in one
// system call, and the first write releases it.
func TestHandshakeWaitsForFirstFrames(t *testing.T) {
	var held string
	_, client := upgradePairWith(t, func(c *Conn) error {
		c.out.mu.Lock()
		if c.out.buf != nil {
			held = string(*c.out.buf)
		}
		c.out.mu.Unlock()
		return c.WriteFrames([]*Frame{NewTextFrame([]byte("welcome"))}, false)
	})
	if !strings.HasPrefix(held, "HTTP/1.1 101 ") {
		t.Fatalf("after Upgrade the batch holds %q, want the handshake response", held)
	}
	_ = client.SetReadDeadline(time.Now().Add(testWait))
	if _, data, err := client.ReadMessage(); err != nil || string(data) != "welcome" {
		t.Fatalf("read %q %v, want the first frame", data, err)
	}
}
