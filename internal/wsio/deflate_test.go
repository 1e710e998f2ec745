package wsio

import (
	"bufio"
	"bytes"
	"compress/flate"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Tests of permessage-deflate (RFC 7692): the negotiation, the frames on
// the wire as a raw client reads them, the inflation of what clients send
// and its limit.

// deflateResponse is the one extension response the server gives.
const deflateResponse = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

// rawClient is a WebSocket client that reads and writes frames byte by
// byte, so that a test sees the RSV1 bit and can send what gorilla's
// client would not.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
	resp *http.Response
}

// dialRaw opens a connection to addr with the given Sec-WebSocket-Extensions
// offer ("" for none) and reads the handshake response.
func dialRaw(t *testing.T, addr, offer string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(testWait))
	req := "GET / HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	if offer != "" {
		req += "Sec-WebSocket-Extensions: " + offer + "\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %s", resp.Status)
	}
	return &rawClient{t: t, conn: conn, br: br, resp: resp}
}

// rawFrame is one frame as read from the wire.
type rawFrame struct {
	b0      byte // FIN, RSV and opcode
	payload []byte
}

func (f rawFrame) rsv1() bool { return f.b0&rsv1Bit != 0 }

// read reads one server frame, which must be unmasked.
func (c *rawClient) read() rawFrame {
	c.t.Helper()
	var hdr [2]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		c.t.Fatalf("reading a frame header: %v", err)
	}
	if hdr[1]&0x80 != 0 {
		c.t.Fatal("the server masked a frame")
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		_, _ = io.ReadFull(c.br, b[:])
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		_, _ = io.ReadFull(c.br, b[:])
		n = binary.BigEndian.Uint64(b[:])
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		c.t.Fatalf("reading a payload of %d bytes: %v", n, err)
	}
	return rawFrame{b0: hdr[0], payload: payload}
}

// text reads one text frame and returns its message, inflated when RSV1
// is set, and whether it was.
func (c *rawClient) text() (string, bool) {
	c.t.Helper()
	f := c.read()
	if f.b0&0x0f != opText || f.b0&finBit == 0 {
		c.t.Fatalf("frame %#x: want a final text frame", f.b0)
	}
	if !f.rsv1() {
		return string(f.payload), false
	}
	return string(inflate(c.t, f.payload)), true
}

// closeCode reads frames until a close frame and returns its code.
func (c *rawClient) closeCode() int {
	c.t.Helper()
	for {
		f := c.read()
		if f.b0&0x0f == opClose {
			if len(f.payload) < 2 {
				return websocket.CloseNoStatusReceived
			}
			return int(binary.BigEndian.Uint16(f.payload))
		}
	}
}

// write sends one masked client frame with first byte b0.
func (c *rawClient) write(b0 byte, payload []byte) {
	c.t.Helper()
	key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
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
	if _, err := c.conn.Write(wire); err != nil {
		c.t.Fatal(err)
	}
}

// deflate compresses msg as a client would for permessage-deflate: a
// sync flush, its four-byte tail stripped.
func deflate(t *testing.T, msg []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	fw, _ := flate.NewWriter(&b, flate.BestCompression)
	_, _ = fw.Write(msg)
	_ = fw.Flush()
	out := b.Bytes()
	if !bytes.HasSuffix(out, deflateTail) {
		t.Fatal("a sync flush did not end with 00 00 ff ff")
	}
	return out[:len(out)-len(deflateTail)]
}

// inflate undoes deflate, as RFC 7692 §7.2.2 has a receiver do.
func inflate(t *testing.T, payload []byte) []byte {
	t.Helper()
	in := append(append([]byte{}, payload...), 0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff)
	out, err := io.ReadAll(flate.NewReader(bytes.NewReader(in)))
	if err != nil {
		t.Fatalf("inflating a frame of %d bytes: %v", len(payload), err)
	}
	return out
}

// releaseHandshake is the first step of a test's server Conn: it sends
// the held handshake response.
func releaseHandshake(c *Conn) error { return c.WriteFrames(nil, false) }

func TestAcceptsDeflate(t *testing.T) {
	cases := []struct {
		offer string
		want  bool
	}{
		{"", false},
		{"permessage-deflate", true},
		{"permessage-deflate; client_max_window_bits", true}, // Chromium's
		{"permessage-deflate; client_max_window_bits=10", true},
		{`permessage-deflate; client_max_window_bits="12"`, true},
		{"permessage-deflate; server_no_context_takeover; client_no_context_takeover", true}, // gorilla's client
		{"PerMessage-Deflate", true},
		{"x-webkit-deflate-frame", false},
		{"permessage-deflate; server_max_window_bits=10", false},
		{"permessage-deflate; server_max_window_bits=15", false},
		{"permessage-deflate; client_max_window_bits=7", false},
		{"permessage-deflate; client_max_window_bits=16", false},
		{"permessage-deflate; client_max_window_bits=010", false},
		{"permessage-deflate; server_no_context_takeover=1", false},
		{"permessage-deflate; server_no_context_takeover; server_no_context_takeover", false},
		{"permessage-deflate; unknown_param", false},
		{"permessage-deflate; server_max_window_bits=10, permessage-deflate", true}, // the second offer
		{"foo, permessage-deflate; client_max_window_bits", true},
	}
	for _, tc := range cases {
		h := http.Header{}
		if tc.offer != "" {
			h.Set("Sec-WebSocket-Extensions", tc.offer)
		}
		if got := acceptsDeflate(h); got != tc.want {
			t.Errorf("offer %q: accepted %v, want %v", tc.offer, got, tc.want)
		}
	}
}

// TestDeflateNegotiation checks the handshake end to end: compression is
// answered only when the server has it on and the client offers something
// the response satisfies, and the Conn knows it.
func TestDeflateNegotiation(t *testing.T) {
	on := Compression{Enabled: true, MinSize: 128}
	cases := []struct {
		name  string
		comp  Compression
		offer string
		want  bool
	}{
		{"on, Chromium's offer", on, "permessage-deflate; client_max_window_bits", true},
		{"on, no offer", on, "", false},
		{"off, an offer", Compression{}, "permessage-deflate", false},
		{"on, only a window the server cannot keep to", on, "permessage-deflate; server_max_window_bits=9", false},
		{"on, a second offer it can", on, "permessage-deflate; server_max_window_bits=9, permessage-deflate", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr, accepted := listenUpgrade(t, tc.comp, releaseHandshake)
			client := dialRaw(t, addr, tc.offer)
			c := awaitAccepted(t, accepted)
			got := client.resp.Header.Get("Sec-WebSocket-Extensions")
			if tc.want && got != deflateResponse || !tc.want && got != "" {
				t.Errorf("response Sec-WebSocket-Extensions %q, want %q", got, map[bool]string{true: deflateResponse}[tc.want])
			}
			if c.Deflates() != tc.want {
				t.Errorf("Deflates() = %v, want %v", c.Deflates(), tc.want)
			}
		})
	}
}

// TestDeflateAssumption fails when gorilla.go can no longer see whether
// gorilla negotiated compression, or where a message read ends: compression
// would then be silently off, or a read cut short unnoticed.
func TestDeflateAssumption(t *testing.T) {
	if fieldCompressor == nil || fieldMessageReader == nil {
		t.Fatal("gorilla's Conn has no field newCompressionWriter or messageReader: check gorilla.go against the gorilla/websocket version in go.mod")
	}
	c, _ := upgradePairDeflate(t, Compression{Enabled: true}, true, releaseHandshake)
	if !c.Deflates() {
		t.Fatal("gorilla's client offered compression and the server has it on, but the Conn does not deflate")
	}
	plain, _ := upgradePairDeflate(t, Compression{Enabled: true}, false, releaseHandshake)
	if plain.Deflates() {
		t.Fatal("no offer, but the Conn deflates")
	}
}

// chatText is a message that compresses as chat JSON does.
func chatText(n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, `{"msg":"message %d of the history","from":"alice","from_id":"%d","id":"%d"}`, i, i%7, i)
	}
	return b.String()[:n]
}

// incompressible is text that deflate cannot shorten: random ASCII, 7 bits
// a byte, where a short piece saves less than its Huffman tables cost.
func incompressible(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] &= 0x7f
	}
	return string(b)
}

// TestDeflatedFramesOnTheWire writes the same frames to a client that
// negotiated compression and to one that did not, and reads both raw:
// frames from MinSize up are compressed for the first (RSV1 set, and they
// inflate to the message), shorter ones and ones that do not shrink are
// plain, and the second gets every frame plain.
func TestDeflatedFramesOnTheWire(t *testing.T) {
	const minSize = 128
	addr, accepted := listenUpgrade(t, Compression{Enabled: true, MinSize: minSize}, releaseHandshake)
	zc := dialRaw(t, addr, "permessage-deflate; client_max_window_bits")
	z := awaitAccepted(t, accepted)
	pc := dialRaw(t, addr, "")
	p := awaitAccepted(t, accepted)

	msgs := []struct {
		text       string
		compressed bool
	}{
		{chatText(minSize - 1), false},
		{chatText(minSize), true},
		{chatText(100_000), true}, // a 64-bit length, and more than a batch
		{incompressible(minSize), false},
		{chatText(2000), true},
	}
	var frames []*Frame
	for _, m := range msgs {
		frames = append(frames, NewTextFrame([]byte(m.text)))
	}
	for _, c := range []*Conn{z, p} {
		errc := make(chan error, 1)
		go func() { errc <- c.WriteFrames(frames, false) }()
		defer func() {
			if err := <-errc; err != nil {
				t.Error(err)
			}
		}()
	}
	for i, m := range msgs {
		got, compressed := zc.text()
		if got != m.text || compressed != m.compressed {
			t.Errorf("frame %d (%d bytes) to the deflating client: compressed %v, text intact %v; want compressed %v", i, len(m.text), compressed, got == m.text, m.compressed)
		}
		got, compressed = pc.text()
		if got != m.text || compressed {
			t.Errorf("frame %d (%d bytes) to the plain client: compressed %v, text intact %v; want plain", i, len(m.text), compressed, got == m.text)
		}
	}
	if n := len(frames[1].compressed(&z.t.zs)); n >= len(frames[1].wire) {
		t.Errorf("the compressed frame has %d bytes, the plain one %d", n, len(frames[1].wire))
	}
}

// TestFrameCompressedOnce has many writers ask for one frame's compressed
// form at once: one compression, whose bytes they all share.
func TestFrameCompressedOnce(t *testing.T) {
	var zs deflaterPool
	f := NewTextFrame([]byte(chatText(4000)))
	const writers = 16
	got := make([][]byte, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = f.compressed(&zs)
		}()
	}
	wg.Wait()
	for i := range writers {
		if &got[i][0] != &got[0][0] || len(got[i]) != len(got[0]) {
			t.Fatalf("writer %d got other bytes than writer 0: the frame was compressed more than once", i)
		}
	}
	if len(got[0]) >= len(f.wire) {
		t.Fatalf("compressed %d bytes into %d", len(f.wire), len(got[0]))
	}
}

// TestReadDeflated has gorilla's client send compressed messages (it
// compresses every message once negotiated) and a raw client send one
// fragmented, RSV1 on its first frame only: both come out whole.
func TestReadDeflated(t *testing.T) {
	c, client := upgradePairDeflate(t, Compression{Enabled: true}, true, releaseHandshake)
	c.SetReadLimit(1 << 20)
	_ = client.SetWriteDeadline(time.Now().Add(testWait))
	_ = c.ws.SetReadDeadline(time.Now().Add(testWait))
	for _, msg := range []string{"a", chatText(300), chatText(200_000)} {
		if err := client.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		kind, data, err := c.ReadMessage()
		if err != nil || kind != websocket.TextMessage || string(data) != msg {
			t.Fatalf("a compressed message of %d bytes: kind %d, %d bytes, %v", len(msg), kind, len(data), err)
		}
	}

	addr, accepted := listenUpgrade(t, Compression{Enabled: true}, releaseHandshake)
	raw := dialRaw(t, addr, "permessage-deflate")
	s := awaitAccepted(t, accepted)
	s.SetReadLimit(1 << 20)
	_ = s.ws.SetReadDeadline(time.Now().Add(testWait))
	msg := chatText(5000)
	z := deflate(t, []byte(msg))
	third := len(z) / 3
	const opContinuation = 0x0
	raw.write(rsv1Bit|opText, z[:third])          // first frame: RSV1, not final
	raw.write(opContinuation, z[third:2*third])   // continuation
	raw.write(finBit|opContinuation, z[2*third:]) // final continuation
	raw.write(finBit|opText, []byte("plain one")) // and a plain message after it
	for _, want := range []string{msg, "plain one"} {
		_, data, err := s.ReadMessage()
		if err != nil || string(data) != want {
			t.Fatalf("fragmented compressed message then a plain one: read %d bytes %v, want %d bytes", len(data), err, len(want))
		}
	}
}

// TestDeflateBomb sends a compressed message that fits the wire limit and
// inflates to a thousand times the message limit: the server answers 1009
// with ErrReadLimit, having inflated (and allocated) a small part of it.
func TestDeflateBomb(t *testing.T) {
	const limit = 8 << 10
	addr, accepted := listenUpgrade(t, Compression{Enabled: true}, releaseHandshake)
	raw := dialRaw(t, addr, "permessage-deflate")
	s := awaitAccepted(t, accepted)
	s.SetReadLimit(limit)
	_ = s.ws.SetReadDeadline(time.Now().Add(testWait))

	bomb := deflate(t, bytes.Repeat([]byte("a"), 8<<20))
	if int64(len(bomb)) > deflatedBound(limit) {
		t.Fatalf("the bomb is %d bytes compressed: over the wire limit %d, it would not test inflation", len(bomb), deflatedBound(limit))
	}
	raw.write(finBit|rsv1Bit|opText, bomb)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, data, err := s.ReadMessage()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, websocket.ErrReadLimit) {
		t.Fatalf("the bomb was read: %d bytes, %v; want ErrReadLimit", len(data), err)
	}
	// A fresh inflater (its 32 KiB window and tables) and the message up
	// to the limit: far below the 8 MiB of the whole.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("reading the bomb allocated %d bytes: it was inflated past the limit", alloc)
	}
	if code := raw.closeCode(); code != websocket.CloseMessageTooBig {
		t.Errorf("close code %d, want 1009", code)
	}
}

// TestDeflatedOverLimit: a message whose inflated size is one byte over the
// limit is refused with 1009, one of exactly the limit is read, compressed
// or not, on a connection that negotiated compression.
func TestDeflatedOverLimit(t *testing.T) {
	const limit = 1000
	addr, accepted := listenUpgrade(t, Compression{Enabled: true}, releaseHandshake)
	raw := dialRaw(t, addr, "permessage-deflate")
	s := awaitAccepted(t, accepted)
	s.SetReadLimit(limit)
	_ = s.ws.SetReadDeadline(time.Now().Add(testWait))

	exact := chatText(limit)
	raw.write(finBit|rsv1Bit|opText, deflate(t, []byte(exact)))
	raw.write(finBit|opText, []byte(exact))
	for i := range 2 {
		if _, data, err := s.ReadMessage(); err != nil || string(data) != exact {
			t.Fatalf("message %d of exactly the limit: %d bytes, %v", i, len(data), err)
		}
	}
	raw.write(finBit|opText, []byte(chatText(limit+1))) // plain: within the wire slack
	if _, _, err := s.ReadMessage(); !errors.Is(err, websocket.ErrReadLimit) {
		t.Fatalf("a plain message one byte over the limit: %v, want ErrReadLimit", err)
	}
	if code := raw.closeCode(); code != websocket.CloseMessageTooBig {
		t.Errorf("close code %d, want 1009", code)
	}
}

// TestBadDeflate: a compressed message that does not inflate, or that
// ends its deflate stream before the frame ends, gets close 1007.
func TestBadDeflate(t *testing.T) {
	final := func() []byte { // a complete stream, final block and all, then junk
		var b bytes.Buffer
		fw, _ := flate.NewWriter(&b, flate.BestSpeed)
		_, _ = fw.Write([]byte(`{"msg":"hi"}`))
		_ = fw.Close()
		return append(b.Bytes(), []byte("trailing bytes that no one inflates")...)
	}
	for name, payload := range map[string][]byte{
		"corrupt":             {0xff, 0xff, 0xff, 0xff, 0x00},
		"after a final block": final(),
	} {
		t.Run(name, func(t *testing.T) {
			addr, accepted := listenUpgrade(t, Compression{Enabled: true}, releaseHandshake)
			raw := dialRaw(t, addr, "permessage-deflate")
			s := awaitAccepted(t, accepted)
			s.SetReadLimit(1 << 20)
			_ = s.ws.SetReadDeadline(time.Now().Add(testWait))
			raw.write(finBit|rsv1Bit|opText, payload)
			if _, data, err := s.ReadMessage(); !errors.Is(err, ErrBadDeflate) {
				t.Fatalf("read %q, %v; want ErrBadDeflate", data, err)
			}
			if code := raw.closeCode(); code != websocket.CloseInvalidFramePayloadData {
				t.Errorf("close code %d, want 1007", code)
			}
		})
	}
}

// TestRSV1WithoutNegotiation: a frame with RSV1 set from a client that did
// not negotiate compression is a protocol error, 1002, whether the server
// has compression on or off.
func TestRSV1WithoutNegotiation(t *testing.T) {
	for _, comp := range []Compression{{}, {Enabled: true}} {
		t.Run(fmt.Sprintf("compression %v", comp.Enabled), func(t *testing.T) {
			addr, accepted := listenUpgrade(t, comp, releaseHandshake)
			raw := dialRaw(t, addr, "")
			s := awaitAccepted(t, accepted)
			s.SetReadLimit(1 << 20)
			_ = s.ws.SetReadDeadline(time.Now().Add(testWait))
			raw.write(finBit|rsv1Bit|opText, deflate(t, []byte(`{"msg":"hi"}`)))
			if _, data, err := s.ReadMessage(); err == nil {
				t.Fatalf("read %q: want a protocol error", data)
			}
			if code := raw.closeCode(); code != websocket.CloseProtocolError {
				t.Errorf("close code %d, want 1002", code)
			}
		})
	}
}

// BenchmarkCompressFrame is the cost of a frame's one compression: a chat
// frame of 193 bytes, as a broadcast pays it once whatever the room's size.
func BenchmarkCompressFrame(b *testing.B) {
	payload := []byte(`{"msg":"I'll push the fix after lunch and ping you when it's deployed.","msg_source":"user","from":"guest-4821","from_id":"12","id":"1796414585989664","seq":1796414585989664,"ts":1796414585989}`)
	var zs deflaterPool
	var out int
	b.ReportAllocs()
	for b.Loop() {
		out = len(NewTextFrame(payload).compressed(&zs))
	}
	b.ReportMetric(float64(out)/float64(len(payload)+2), "wire-ratio")
}

// TestPrecompress: a broadcaster's Precompress compresses a frame for a
// connection that negotiated compression, and only a frame it would send
// compressed; a plain connection leaves the frame as it is.
func TestPrecompress(t *testing.T) {
	z, _ := upgradePairDeflate(t, Compression{Enabled: true, MinSize: 128}, true, releaseHandshake)
	plain, _ := upgradePairDeflate(t, Compression{Enabled: true, MinSize: 128}, false, releaseHandshake)
	long, short := NewTextFrame([]byte(chatText(500))), NewTextFrame([]byte(chatText(127)))
	for _, f := range []*Frame{long, short} {
		plain.Precompress(f)
		if f.z.Load() != nil {
			t.Fatal("Precompress on a connection without compression compressed the frame")
		}
	}
	z.Precompress(short)
	if short.z.Load() != nil {
		t.Error("Precompress compressed a frame under MinSize")
	}
	z.Precompress(long)
	zp := long.z.Load()
	if zp == nil || len(*zp) >= len(long.wire) || (*zp)[0] != finBit|rsv1Bit|opText {
		t.Fatal("Precompress did not leave the frame's compressed form ready")
	}
	z.Precompress(long)
	if long.z.Load() != zp {
		t.Error("a second Precompress compressed the frame again")
	}
}
