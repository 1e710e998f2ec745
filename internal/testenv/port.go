package testenv

import (
	"fmt"
	"net"
	"time"
)

// WaitLong bounds every wait on a process: long enough for a loaded 2-core
// machine running the race detector, short enough that a hung test fails
// with a message rather than the go test timeout.
const WaitLong = 15 * time.Second

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
