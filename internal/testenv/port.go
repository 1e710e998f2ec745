package testenv

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// WaitLong bounds every wait on a process: long enough for a loaded 2-core
// machine running the race detector, short enough that a hung test fails
// with a message rather than the go test timeout.
const WaitLong = 15 * time.Second

// handedOut is every port FreePort has returned in this test process.
// Caddy listens with SO_REUSEPORT, so a port handed to two servers (the
// kernel may offer a port again as soon as the probe closes it) would be
// shared silently, and a client would reach either: a test once dialled
// the chat and got Caddy's admin endpoint.
var (
	portsMu   sync.Mutex
	handedOut = map[int]bool{}
)

// FreePort returns a loopback TCP port that was free a moment ago and that
// it has not returned before in this process.
func FreePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	const tries = 50
	for range tries {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !handedOut[port] {
			handedOut[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("finding a free port: %d tries offered only ports handed out before", tries)
}

// AwaitPort waits up to WaitLong until addr accepts TCP connections. It
// gives up early when exited is closed: a process that died will not listen.
func AwaitPort(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(WaitLong)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("process exited before listening on %s", addr)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond) // polling a port: there is no event to await
	}
	return fmt.Errorf("nothing listens on %s after %v", addr, WaitLong)
}
