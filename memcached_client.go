package chatroom

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"go.uber.org/zap"
)

// Client settings. A short timeout bounds what a frozen server costs each
// loop; more idle connections than gomemcache's default of 2 avoid a new TCP
// connection per request when the loops and NewID overlap.
const (
	memcachedTimeout      = 300 * time.Millisecond
	memcachedMaxIdleConns = 16
)

// mcClient wraps a gomemcache client with what the registry needs around
// every request: one retry after a broken pooled connection, an up/down
// state logged once per change, and the error metric.
type mcClient struct {
	mc      *memcache.Client
	servers []string
	metrics *metrics
	logger  *zap.Logger

	down     atomic.Bool
	requests atomic.Uint64 // round trips attempted, for the benchmark
	mu       sync.Mutex    // serialises state changes and their log lines
	onChange func(up bool)
}

// newMCClient checks the server list and builds the client. It does not
// connect: a config that is only validated never reaches memcached.
func newMCClient(servers []string, m *metrics, logger *zap.Logger) (*mcClient, error) {
	if len(servers) == 0 {
		return nil, errors.New("no memcached servers")
	}
	var sl memcache.ServerList
	if err := sl.SetServers(servers...); err != nil {
		return nil, fmt.Errorf("memcached servers %v: %w", servers, err)
	}
	mc := memcache.NewFromSelector(&sl)
	mc.Timeout = memcachedTimeout
	mc.MaxIdleConns = memcachedMaxIdleConns
	return &mcClient{mc: mc, servers: servers, metrics: m, logger: logger}, nil
}

// isUp reports whether the last request reached memcached. Loops that would
// only pile up timeouts skip their work while it is down.
func (c *mcClient) isUp() bool { return !c.down.Load() }

// unavailable reports whether err means memcached could not be reached (as
// opposed to an answer such as a miss).
func unavailable(err error) bool {
	if err == nil {
		return false
	}
	var netErr net.Error
	var timeout *memcache.ConnectTimeoutError
	return errors.As(err, &netErr) || errors.As(err, &timeout) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, memcache.ErrNoServers) || errors.Is(err, net.ErrClosed)
}

// answer reports whether err is a normal answer rather than a failure.
func answer(err error) bool {
	return err == nil || errors.Is(err, memcache.ErrCacheMiss) ||
		errors.Is(err, memcache.ErrNotStored) || errors.Is(err, memcache.ErrCASConflict)
}

// staleConn reports whether err is what a pooled connection gives after
// memcached restarted: the next connection may be fine.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// do runs one request. After memcached restarts, each pooled connection
// fails once with EOF: the request is retried on the next one, up to the
// size of the pool, and once more for any other failure, before memcached
// counts as down.
func (c *mcClient) do(op string, f func() error) error {
	c.requests.Add(1)
	err := f()
	for stale := 0; staleConn(err) && stale < memcachedMaxIdleConns; stale++ {
		c.requests.Add(1)
		err = f()
	}
	if unavailable(err) {
		c.requests.Add(1)
		err = f()
	}
	switch {
	case answer(err):
		c.setDown(false, op, nil)
	case unavailable(err):
		c.metrics.memcachedErrors.Inc()
		c.setDown(true, op, err)
	default:
		// The server answered, with an error (a value too large, a
		// corrupt counter): it is up, but the request failed.
		c.metrics.memcachedErrors.Inc()
		c.setDown(false, op, nil)
		c.logger.Warn("memcached request failed", zap.String("op", op), zap.Error(err))
	}
	if err != nil {
		return fmt.Errorf("memcached %s: %w", op, err)
	}
	return nil
}

// setDown records the state and logs only its changes.
func (c *mcClient) setDown(down bool, op string, err error) {
	if c.down.Load() == down {
		return
	}
	c.mu.Lock()
	changed := c.down.Load() != down
	if changed {
		c.down.Store(down)
		if down {
			c.logger.Warn("memcached unreachable: chatting locally until it returns",
				zap.Strings("servers", c.servers), zap.String("op", op), zap.Error(err))
		} else {
			c.logger.Info("memcached reachable again: rejoining the cluster", zap.Strings("servers", c.servers))
		}
	}
	onChange := c.onChange
	c.mu.Unlock()
	if changed && onChange != nil {
		onChange(!down)
	}
}

func (c *mcClient) get(key string) (*memcache.Item, error) {
	var it *memcache.Item
	err := c.do("get", func() (err error) { it, err = c.mc.Get(key); return err })
	return it, err
}

func (c *mcClient) getMulti(keys []string) (map[string]*memcache.Item, error) {
	if len(keys) == 0 {
		return map[string]*memcache.Item{}, nil
	}
	var items map[string]*memcache.Item
	err := c.do("get_multi", func() (err error) { items, err = c.mc.GetMulti(keys); return err })
	return items, err
}

func (c *mcClient) set(it *memcache.Item) error {
	return c.do("set", func() error { return c.mc.Set(it) })
}

func (c *mcClient) add(it *memcache.Item) error {
	return c.do("add", func() error { return c.mc.Add(it) })
}

func (c *mcClient) cas(it *memcache.Item) error {
	return c.do("cas", func() error { return c.mc.CompareAndSwap(it) })
}

func (c *mcClient) touch(key string, seconds int32) error {
	return c.do("touch", func() error { return c.mc.Touch(key, seconds) })
}

func (c *mcClient) del(key string) error {
	return c.do("delete", func() error { return c.mc.Delete(key) })
}

func (c *mcClient) incr(key string, delta uint64) (uint64, error) {
	var n uint64
	err := c.do("incr", func() (err error) { n, err = c.mc.Increment(key, delta); return err })
	return n, err
}

// isMiss reports whether err is a cache miss, through do's wrapping.
func isMiss(err error) bool { return errors.Is(err, memcache.ErrCacheMiss) }
