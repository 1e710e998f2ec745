package chatroom

// Tests of `compression` (permessage-deflate) against a real Caddy: a
// member that negotiated it and one that did not, in one room; the deflate
// bomb; RSV1 from a client that did not negotiate; and negotiation off
// without the subdirective.

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gorilla/websocket"
)

// deflateExtension is the server's answer to a permessage-deflate offer.
const deflateExtension = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

// countingConn counts the bytes read from a client's socket: what the
// server put on the wire for it.
type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// dialCounted dials url as a client that offers permessage-deflate or not,
// and counts what it reads. It returns the handshake response too.
func dialCounted(t *testing.T, url string, offer bool) (*wsClient, *atomic.Int64, *http.Response) {
	t.Helper()
	read := new(atomic.Int64)
	d := websocket.Dialer{
		HandshakeTimeout:  waitLong,
		EnableCompression: offer,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countingConn{c, read}, nil
		},
	}
	conn, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c := &wsClient{t: t, name: url, conn: conn, frames: make(chan []byte, 4096), closed: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(func() { _ = conn.Close() })
	return c, read, resp
}

// writeRawFrame writes one masked client frame with first byte b0 straight
// to the client's socket, past gorilla's writer: what a client that breaks
// the rules sends.
func writeRawFrame(t *testing.T, c *wsClient, b0 byte, payload []byte) {
	t.Helper()
	key := [4]byte{0x11, 0x22, 0x33, 0x44}
	wire := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		wire = append(wire, 0x80|byte(n))
	case n <= 0xffff:
		wire = append(wire, 0x80|126)
		wire = binary.BigEndian.AppendUint16(wire, uint16(n))
	default:
		wire = append(wire, 0x80|127)
		wire = binary.BigEndian.AppendUint64(wire, uint64(n))
	}
	wire = append(wire, key[:]...)
	for i, b := range payload {
		wire = append(wire, b^key[i&3])
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.conn.NetConn().Write(wire); err != nil {
		t.Fatal(err)
	}
}

// deflated compresses msg as permessage-deflate does: a sync flush, its
// four-byte tail stripped.
func deflated(t *testing.T, msg []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	fw, _ := flate.NewWriter(&b, flate.BestCompression)
	_, _ = fw.Write(msg)
	_ = fw.Flush()
	return bytes.TrimSuffix(b.Bytes(), []byte{0, 0, 0xff, 0xff})
}

// TestCompressionMixedRoom: with `compression` on, a member that offered
// permessage-deflate and one that did not share a room. Both read every
// message intact, the long ones cost the first fewer bytes on the wire,
// and what the deflating member sends (gorilla compresses every message)
// reaches the others intact.
func TestCompressionMixedRoom(t *testing.T) {
	p := startCaddy(t, faultSite("compression", "history 5"))
	url := p.url("ws", "/ws")
	z, zRead, zResp := dialCounted(t, url, true)
	plain, plainRead, plainResp := dialCounted(t, url, false)
	if got := zResp.Header.Get("Sec-WebSocket-Extensions"); got != deflateExtension {
		t.Fatalf("the offering client's handshake: Sec-WebSocket-Extensions %q, want %q", got, deflateExtension)
	}
	if got := plainResp.Header.Get("Sec-WebSocket-Extensions"); got != "" {
		t.Fatalf("the client that offered nothing got Sec-WebSocket-Extensions %q", got)
	}
	zID, _ := z.login()
	plainID, _ := plain.login()
	z.await("join of the plain member", isEvent("join", plainID))
	sender, senderID := connect(t, url)
	for _, c := range []*wsClient{z, plain} {
		c.await("join of the sender", isEvent("join", senderID))
	}

	long := strings.Repeat("a chat message that says the same thing again and again; ", 20)
	zBefore, plainBefore := zRead.Load(), plainRead.Load()
	for _, text := range []string{"short", long} {
		sender.send(map[string]any{"msg": text})
		for _, c := range []*wsClient{z, plain} {
			c.await("the sender's "+text[:5], isChat(senderID, text))
		}
	}
	zBytes, plainBytes := zRead.Load()-zBefore, plainRead.Load()-plainBefore
	t.Logf("a short and a long message: %d bytes on the wire deflated, %d plain", zBytes, plainBytes)
	if zBytes*2 > plainBytes {
		t.Errorf("the two messages took %d bytes to the deflating member and %d to the plain one: want less than half", zBytes, plainBytes)
	}

	// gorilla's client compresses what it sends once negotiated.
	z.send(map[string]any{"msg": long})
	for _, c := range []*wsClient{plain, sender} {
		c.await("the deflating member's message", isChat(zID, long))
	}

	// A joiner that deflates gets the history replayed intact too.
	late, _, _ := dialCounted(t, url, true)
	late.login()
	for _, want := range []string{"short", long, long} {
		if f := late.next(); f.str("msg") != want {
			t.Fatalf("history replayed to a deflating joiner: %q, want %q", f.str("msg"), want)
		}
	}
}

// TestCompressionBomb: a compressed message of a few KiB that inflates to
// 2 MiB, past max_message_size, closes its sender with 1009; the others
// chat on.
func TestCompressionBomb(t *testing.T) {
	p := startCaddy(t, faultSite("compression", "max_message_size 4KiB"))
	url := p.url("ws", "/ws")
	rc := joinRoom(t, url, 2)
	bomber, _, _ := dialCounted(t, url, true)
	bid, _ := bomber.login()
	for _, c := range rc.clients {
		c.await("join of the bomber", isEvent("join", bid))
	}
	dropped := p.metric(seriesDropped(dropTooBig))
	bomb := deflated(t, []byte(`{"msg":"`+strings.Repeat("b", 2<<20)+`"}`))
	if len(bomb) > 4<<10 {
		t.Fatalf("the bomb is %d bytes compressed: more than max_message_size, it would not test inflation", len(bomb))
	}
	writeRawFrame(t, bomber, 0x80|0x40|0x1, bomb) // FIN, RSV1, text
	if code := bomber.awaitClose(); code != websocket.CloseMessageTooBig {
		t.Errorf("close code %d, want 1009", code)
	}
	for _, c := range rc.clients {
		if f := c.next(); !isEvent("leave", bid)(f) {
			t.Errorf("%s: next frame is %v, want the bomber's leave", c.name, f)
		}
	}
	rc.chatRound(t, "after the bomb")
	p.awaitMetric(seriesDropped(dropTooBig), "one more drop", func(v float64) bool { return v == dropped+1 })
}

// TestCompressionRSV1NotNegotiated: with `compression` on, a client that
// did not negotiate it and sends a frame with RSV1 set is closed with 1002,
// as without compression.
func TestCompressionRSV1NotNegotiated(t *testing.T) {
	p := startCaddy(t, faultSite("compression"))
	url := p.url("ws", "/ws")
	rc := joinRoom(t, url, 2)
	offender, _, resp := dialCounted(t, url, false)
	if got := resp.Header.Get("Sec-WebSocket-Extensions"); got != "" {
		t.Fatalf("no offer, yet Sec-WebSocket-Extensions %q", got)
	}
	oid, _ := offender.login()
	for _, c := range rc.clients {
		c.await("join of the offender", isEvent("join", oid))
	}
	writeRawFrame(t, offender, 0x80|0x40|0x1, deflated(t, []byte(`{"msg":"sneaky"}`)))
	if code := offender.awaitClose(); code != websocket.CloseProtocolError {
		t.Errorf("close code %d, want 1002", code)
	}
	for _, c := range rc.clients {
		if f := c.next(); !isEvent("leave", oid)(f) {
			t.Errorf("%s: next frame is %v, want the offender's leave and nothing of its frame", c.name, f)
		}
	}
	rc.chatRound(t, "after the offender")
}

// TestCompressionOffByDefault: without `compression`, an offer gets no
// extension, and every frame is plain (gorilla's client would fail on a
// frame with RSV1 it did not negotiate).
func TestCompressionOffByDefault(t *testing.T) {
	p := startCaddy(t, faultSite())
	url := p.url("ws", "/ws")
	c, _, resp := dialCounted(t, url, true)
	if got := resp.Header.Get("Sec-WebSocket-Extensions"); got != "" {
		t.Fatalf("compression is off, yet Sec-WebSocket-Extensions %q", got)
	}
	c.login()
	sender, senderID := connect(t, url)
	c.await("join of the sender", isEvent("join", senderID))
	long := strings.Repeat("compressible ", 100)
	sender.send(map[string]any{"msg": long})
	c.await("the long message", isChat(senderID, long))
}

// TestCompressionBadDeflate: a compressed message that does not inflate
// closes its sender with 1007, counted as bad_deflate; the others chat on.
func TestCompressionBadDeflate(t *testing.T) {
	p := startCaddy(t, faultSite("compression"))
	url := p.url("ws", "/ws")
	rc := joinRoom(t, url, 2)
	offender, _, _ := dialCounted(t, url, true)
	oid, _ := offender.login()
	for _, c := range rc.clients {
		c.await("join of the offender", isEvent("join", oid))
	}
	dropped := p.metric(seriesDropped(dropBadDeflate))
	writeRawFrame(t, offender, 0x80|0x40|0x1, []byte{0xff, 0xff, 0xff, 0xff, 0x00}) // no deflate block starts so
	if code := offender.awaitClose(); code != websocket.CloseInvalidFramePayloadData {
		t.Errorf("close code %d, want 1007", code)
	}
	for _, c := range rc.clients {
		if f := c.next(); !isEvent("leave", oid)(f) {
			t.Errorf("%s: next frame is %v, want the offender's leave", c.name, f)
		}
	}
	rc.chatRound(t, "after the offender")
	p.awaitMetric(seriesDropped(dropBadDeflate), "one bad_deflate drop", func(v float64) bool { return v == dropped+1 })
}
