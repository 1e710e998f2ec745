package wsio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case server = <-accepted:
	case <-time.After(testWait):
		t.Fatal("no connection accepted")
	}
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// readN reads exactly n bytes from c, bounded.
func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testWait))
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return buf
}

func TestBatchConnGathersWritesUntilFlush(t *testing.T) {
	server, client := tcpPair(t)
	var pool bufPool
	b := newBatchConn(server, &pool)

	b.begin(time.Now().Add(WriteWait))
	for _, s := range []string{"one ", "two ", "three"} {
		if n, err := b.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	// Nothing is on the wire before the flush.
	_ = client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := client.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes before the flush (err %v); want none", n, err)
	}
	if err := b.flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if got := readN(t, client, len("one two three")); string(got) != "one two three" {
		t.Fatalf("read %q", got)
	}

	// Outside a batch, a write goes straight out.
	if _, err := b.Write([]byte("direct")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, client, len("direct")); string(got) != "direct" {
		t.Fatalf("read %q", got)
	}
}

func TestBatchConnLargeBatchKeepsOrder(t *testing.T) {
	server, client := tcpPair(t)
	var pool bufPool
	b := newBatchConn(server, &pool)
	want := make([]byte, 0, 3*maxBatchBytes)
	done := make(chan []byte, 1)
	go func() {
		_ = client.SetReadDeadline(time.Now().Add(testWait))
		buf := make([]byte, 3*maxBatchBytes)
		n, _ := io.ReadFull(client, buf)
		done <- buf[:n]
	}()
	b.begin(time.Now().Add(WriteWait))
	for i := 0; len(want) < 3*maxBatchBytes-1000; i++ {
		chunk := bytes.Repeat([]byte{byte('a' + i%26)}, 1000)
		if _, err := b.Write(chunk); err != nil {
			t.Fatal(err)
		}
		want = append(want, chunk...)
	}
	big := bytes.Repeat([]byte{'Z'}, 3*maxBatchBytes-len(want))
	if _, err := b.Write(big); err != nil {
		t.Fatal(err)
	}
	want = append(want, big...)
	if err := b.flush(); err != nil {
		t.Fatal(err)
	}
	if got := <-done; !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d in order", len(got), len(want))
	}
}

func TestBatchConnCloseSendsPendingFrames(t *testing.T) {
	server, client := tcpPair(t)
	var pool bufPool
	b := newBatchConn(server, &pool)
	b.begin(time.Now().Add(WriteWait))
	if _, err := b.Write([]byte("close frame")); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, client, len("close frame")); string(got) != "close frame" {
		t.Fatalf("read %q", got)
	}
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the pending bytes: %v, want EOF", err)
	}
	if _, err := b.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
	if err := b.flush(); err != nil {
		t.Fatalf("flush after Close with nothing pending: %v", err)
	}
}

// TestBatchConnCloseUnblocksStuckFlush is the regression test of a slow
// consumer that took up to WriteWait to close: Close waited for the mutex
// that a flush held while blocked on a client that reads nothing.
func TestBatchConnCloseUnblocksStuckFlush(t *testing.T) {
	server, _ := tcpPair(t) // the client end never reads
	var pool bufPool
	b := newBatchConn(server, &pool)
	flushed := make(chan error, 1)
	go func() {
		chunk := bytes.Repeat([]byte("x"), maxBatchBytes)
		b.begin(time.Now().Add(time.Hour))
		for range 1024 { // 64 MiB: far more than the socket buffers hold
			if _, err := b.Write(chunk); err != nil {
				flushed <- err
				return
			}
		}
		flushed <- b.flush()
	}()
	// Wait until the writer is stuck: the mutex stays held across several
	// probes (a Write that does not block holds it for microseconds).
	// Blocking in write has no event to await, so this polls, bounded.
	deadline := time.Now().Add(testWait)
	for held := 0; held < 5; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the writer never blocked on the non-reading client")
		}
		if b.mu.TryLock() {
			b.mu.Unlock()
			held = 0
		} else {
			held++
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	// Close must not wait for the hour-long write deadline: a bound well
	// above CloseWait, far below the flush's deadline.
	select {
	case <-closed:
	case <-time.After(testWait):
		t.Fatalf("Close did not return within %v while a flush was stuck", testWait)
	}
	select {
	case err := <-flushed:
		if err == nil {
			t.Fatal("the stuck flush reported success")
		}
	case <-time.After(testWait):
		t.Fatal("the stuck flush did not end after Close")
	}
}
