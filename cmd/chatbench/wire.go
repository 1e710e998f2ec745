package main

import (
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// typicalMessages are the chat texts the wire mode sends: sentences of the
// lengths people type, none repeated within a history replay's reach of
// the compressor (every message is compressed on its own).
var typicalMessages = []string{
	"morning all",
	"Has anyone tried the new build on staging yet?",
	"yes, works for me",
	"I'll push the fix after lunch and ping you when it's deployed.",
	"lol",
	"Can someone review #482? It's the one with the retry logic for the upload worker.",
	"on it",
	"The meeting moved to 3pm, same room.",
	"thanks!",
	"Does the dashboard look slow to anyone else, or is it just my connection today?",
	"brb coffee",
	"Merged. Let's keep an eye on the error rate for the next hour or so.",
}

// runWire measures the bytes a client reads off the wire for the frames
// that gain most from compression, once offering permessage-deflate and
// once not: a history replay, an online list, and one chat message. The
// server needs `history` of at least -history, `presence_limit` of at
// least -members, and `compression` for the deflated column to differ.
func runWire(args []string) error {
	fs := flag.NewFlagSet("wire", flag.ExitOnError)
	rawURL := fs.String("url", "ws://127.0.0.1:8080/ws", "WebSocket URL (loopback only); rooms are chosen with ?room=")
	history := fs.Int("history", 50, "messages in the replayed history (the server's `history` must be at least this)")
	members := fs.Int("members", 100, "members in the room whose online list is measured")
	_ = fs.Parse(args)
	if *history < 1 || *history > 1000 || *members < 2 || *members > 10000 {
		return errors.New("-history must be 1 to 1000 and -members 2 to 10000")
	}
	base, err := checkLoopback(*rawURL)
	if err != nil {
		return err
	}
	tag := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	type row struct {
		name        string
		plain, zipd int
	}
	rows := []row{
		{name: fmt.Sprintf("history replay, %d messages", *history)},
		{name: fmt.Sprintf("online list, %d members", *members)},
		{name: "one chat message"},
	}
	for _, offer := range []bool{false, true} {
		mode := map[bool]string{false: "plain", true: "deflate"}[offer]
		hist, msg, err := wireHistory(roomURL(base, "room", "wire-hist-"+mode+"-"+tag), *history, offer)
		if err != nil {
			return err
		}
		online, err := wireOnline(roomURL(base, "room", "wire-online-"+mode+"-"+tag), *members, offer)
		if err != nil {
			return err
		}
		for i, n := range []int{hist, online, msg} {
			if offer {
				rows[i].zipd = n
			} else {
				rows[i].plain = n
			}
		}
	}
	fmt.Println("| frames | plain | permessage-deflate | deflated / plain |")
	fmt.Println("|---|---:|---:|---:|")
	for _, r := range rows {
		fmt.Printf("| %s | %d B | %d B | %.2f |\n", r.name, r.plain, r.zipd, float64(r.zipd)/float64(r.plain))
	}
	return nil
}

// wireHistory fills a room with n typical messages, then joins it with a
// measuring client, and returns the wire bytes of the replayed history and
// of one more message sent after the join.
func wireHistory(url string, n int, offer bool) (history, message int, err error) {
	conns, err := dialAll(2, 2, func(int) string { return url })
	if err != nil {
		return 0, 0, err
	}
	defer closeAll(conns, time.Second)
	sender, watcher := conns[0], conns[1]
	for i := range n {
		if err := sendChat(sender, typicalMessages[i%len(typicalMessages)]); err != nil {
			return 0, 0, err
		}
	}
	// The room has them all once the watcher has: the history is complete.
	if err := awaitChats(watcher, n); err != nil {
		return 0, 0, err
	}
	rc, err := dialRawClient(url, offer)
	if err != nil {
		return 0, 0, err
	}
	defer rc.conn.Close()
	for range 2 { // welcome, online
		if _, _, err := rc.frame(); err != nil {
			return 0, 0, err
		}
	}
	for range n {
		size, _, err := rc.frame()
		if err != nil {
			return 0, 0, err
		}
		history += size
	}
	if err := sendChat(sender, typicalMessages[3]); err != nil {
		return 0, 0, err
	}
	for {
		size, data, err := rc.frame()
		if err != nil {
			return 0, 0, err
		}
		if bytes.Contains(data, fromIDKey) {
			return history, size, nil
		}
	}
}

// wireOnline fills a room with members-1 clients, then joins it with a
// measuring client and returns the wire bytes of the online list it gets.
func wireOnline(url string, members int, offer bool) (int, error) {
	conns, err := dialAll(members-1, 32, func(int) string { return url })
	if err != nil {
		return 0, err
	}
	defer closeAll(conns, time.Second)
	rc, err := dialRawClient(url, offer)
	if err != nil {
		return 0, err
	}
	defer rc.conn.Close()
	if _, _, err := rc.frame(); err != nil { // welcome
		return 0, err
	}
	size, data, err := rc.frame()
	if err != nil {
		return 0, err
	}
	var online struct {
		Event   string            `json:"event"`
		Members []json.RawMessage `json:"online"`
	}
	if err := json.Unmarshal(data, &online); err != nil || online.Event != "online" || len(online.Members) != members {
		return 0, fmt.Errorf("the second frame is not an online list of %d members (is presence_limit below it?): %.200s", members, data)
	}
	return size, nil
}

// sendChat sends one chat message.
func sendChat(ws *websocket.Conn, text string) error {
	data, _ := json.Marshal(map[string]string{"msg": text})
	_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return ws.WriteMessage(websocket.TextMessage, data)
}

// awaitChats reads frames until n chat messages have arrived.
func awaitChats(ws *websocket.Conn, n int) error {
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer ws.SetReadDeadline(time.Time{})
	for n > 0 {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return fmt.Errorf("waiting for %d more chat messages: %w", n, err)
		}
		if bytes.Contains(data, fromIDKey) {
			n--
		}
	}
	return nil
}

// rawClient reads frames off the socket itself, so that it counts what
// each frame takes on the wire, header included.
type rawClient struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialRawClient opens a WebSocket connection by hand, offering
// permessage-deflate as Chromium does when offer is set, and fails unless
// the server's answer matches the offer.
func dialRawClient(rawURL string, offer bool) (*rawClient, error) {
	u, err := checkLoopback(rawURL)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	if offer {
		req += "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	ext := resp.Header.Get("Sec-WebSocket-Extensions")
	if resp.StatusCode != http.StatusSwitchingProtocols || offer != strings.HasPrefix(ext, "permessage-deflate") {
		conn.Close()
		return nil, fmt.Errorf("handshake: %s, extensions %q (offered: %v; is `compression` on?)", resp.Status, ext, offer)
	}
	return &rawClient{conn: conn, br: br}, nil
}

// frame reads one server frame and returns its size on the wire and its
// message, inflated when it was compressed.
func (c *rawClient) frame() (int, []byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return 0, nil, err
	}
	size, n := 2, uint64(hdr[1]&0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return 0, nil, err
		}
		size, n = size+2, uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return 0, nil, err
		}
		size, n = size+8, binary.BigEndian.Uint64(b[:])
	}
	if n > 1<<24 {
		return 0, nil, fmt.Errorf("a frame of %d bytes", n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return 0, nil, err
	}
	size += int(n)
	if hdr[0]&0x40 == 0 {
		return size, payload, nil
	}
	tail := []byte{0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff}
	data, err := io.ReadAll(io.LimitReader(flate.NewReader(io.MultiReader(bytes.NewReader(payload), bytes.NewReader(tail))), 1<<24))
	if err != nil {
		return 0, nil, fmt.Errorf("inflating a frame: %w", err)
	}
	return size, data, nil
}
