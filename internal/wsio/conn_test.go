package wsio

import (
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// testWait bounds every wait of these tests.
const testWait = 15 * time.Second

// upgradePair returns both ends of a real WebSocket connection over
// loopback, the server's made by a Transport.
func upgradePair(t *testing.T) (*Conn, *websocket.Conn) {
	t.Helper()
	return upgradePairWith(t, func(c *Conn) error {
		return c.WriteFrames(nil, false) // sends the held handshake
	})
}

// upgradePairWith is upgradePair with first run on the server's Conn
// before it is returned; first must release the held handshake.
func upgradePairWith(t *testing.T, first func(*Conn) error) (*Conn, *websocket.Conn) {
	t.Helper()
	return upgradePairDeflate(t, Compression{}, false, first)
}

// upgradePairDeflate is upgradePairWith with the server's compression
// setting, and a client that offers permessage-deflate when offer is set
// (and then compresses what it sends and inflates what it is sent).
func upgradePairDeflate(t *testing.T, comp Compression, offer bool, first func(*Conn) error) (*Conn, *websocket.Conn) {
	t.Helper()
	addr, accepted := listenUpgrade(t, comp, first)
	d := websocket.Dialer{HandshakeTimeout: testWait, EnableCompression: offer}
	client, _, err := d.Dial("ws://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return awaitAccepted(t, accepted), client
}

// listenUpgrade serves WebSocket upgrades on a loopback port through a
// Transport and an Upgrader with the compression setting, running first on
// each Conn before it is handed over on the channel.
func listenUpgrade(t *testing.T, comp Compression, first func(*Conn) error) (string, <-chan *Conn) {
	t.Helper()
	tr := NewTransport(zap.NewNop())
	t.Cleanup(tr.Close)
	u := NewUpgrader(comp)
	accepted := make(chan *Conn, 4)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := tr.Upgrade(u, w, r)
		if err != nil {
			t.Error(err)
			return
		}
		if err := first(&c); err != nil {
			t.Error(err)
			return
		}
		accepted <- &c
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), accepted
}

// awaitAccepted returns the next Conn the server accepted, closed when the
// test ends.
func awaitAccepted(t *testing.T, accepted <-chan *Conn) *Conn {
	t.Helper()
	select {
	case c := <-accepted:
		t.Cleanup(func() { _ = c.Close() })
		return c
	case <-time.After(testWait):
		t.Fatal("the server did not accept the connection")
	}
	return nil
}

// TestParkingAssumption fails when gorilla no longer reads through the
// reader the hijacker gives it, or hides it where gorilla.go cannot find
// it: idle connections would then silently keep a goroutine each.
func TestParkingAssumption(t *testing.T) {
	c, _ := upgradePair(t)
	if c.out == nil {
		t.Fatal("the upgraded connection does not run on the transport's batchConn: the upgrader no longer uses the hijacked net.Conn")
	}
	if c.out.br == nil {
		t.Fatal("the hijacker made no reader of its own: the hijacked reader had buffered bytes")
	}
	if c.br == nil {
		t.Fatal("gorilla's read buffer is not the hijacker's reader (or its field \"br\" moved): " +
			"parking is off. Check gorilla.go's readerOf and the hijacker against the gorilla/websocket version in go.mod")
	}
}

// TestParkedConnectionWakesOnControlFrame parks a connection and checks
// that a ping from the client wakes it, and that ReadControl answers it
// beside gorilla and leaves the connection idle again.
func TestParkedConnectionWakesOnControlFrame(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("parking needs epoll")
	}
	c, client := upgradePair(t)
	woken := make(chan struct{}, 1)
	if !c.Watch(wakeFunc(func() { woken <- struct{}{} })) {
		t.Fatal("Watch: the connection cannot park")
	}
	defer c.Unwatch()
	if !c.CanPark() || !c.Idle() {
		t.Fatalf("fresh connection: CanPark %v, Idle %v; want both", c.CanPark(), c.Idle())
	}
	if err := c.Arm(); err != nil {
		t.Fatal(err)
	}
	pong := make(chan string, 1)
	client.SetPongHandler(func(s string) error { pong <- s; return nil })
	go func() { _, _, _ = client.ReadMessage() }() // runs the pong handler
	if err := client.WriteControl(websocket.PingMessage, []byte("hello"), time.Now().Add(testWait)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woken:
	case <-time.After(testWait):
		t.Fatal("the parked connection was not woken by a ping")
	}
	deadline := time.Now().Add(testWait)
	for !c.ReadControl() {
		// The ping's bytes may arrive in pieces: fill the buffer.
		if time.Now().After(deadline) {
			t.Fatal("ReadControl did not find the ping")
		}
		_ = c.ws.NetConn().SetReadDeadline(time.Now().Add(testWait))
		if _, err := c.br.Peek(c.br.Buffered() + 1); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case s := <-pong:
		if s != "hello" {
			t.Errorf("pong payload %q, want hello", s)
		}
	case <-time.After(testWait):
		t.Fatal("no pong for the ping")
	}
	if !c.Idle() {
		t.Error("the connection is not idle after its only frame was consumed")
	}
}

// wakeFunc makes a function a Waker.
type wakeFunc func()

func (f wakeFunc) Wake() { f() }

// TestWriteFramesAndCloseWith sends a batch and a close code through the
// Conn and reads them back as a client.
func TestWriteFramesAndCloseWith(t *testing.T) {
	c, client := upgradePair(t)
	var frames []*Frame
	for _, s := range []string{"one", "two", "three"} {
		frames = append(frames, NewTextFrame([]byte(s)))
	}
	if err := c.WriteFrames(frames, false); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(testWait))
	for _, want := range []string{"one", "two", "three"} {
		_, data, err := client.ReadMessage()
		if err != nil || string(data) != want {
			t.Fatalf("read %q %v, want %q", data, err, want)
		}
	}
	c.CloseWith(websocket.CloseGoingAway, "bye")
	_, _, err := client.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseGoingAway || ce.Text != "bye" {
		t.Fatalf("after CloseWith: %v, want close 1001 bye", err)
	}
}
