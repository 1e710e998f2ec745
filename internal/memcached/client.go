package memcached

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
	requestTimeout = 300 * time.Millisecond
	maxIdleConns   = 16
	// downProbe is how often a server found down is tried again: a
	// refused connection costs nothing, and it bounds how long the
	// cluster stays split after the server returns.
	downProbe = 250 * time.Millisecond
	// maxMultiKeys bounds the keys of one multi-get, so that what one
	// answer can hold stays bounded whatever a counter says.
	maxMultiKeys = 128
)

// errServerDown is returned without a round trip while a server is down
// and not due for a probe.
var errServerDown = errors.New("memcached server down")

// client reaches the memcached servers one at a time: every key belongs to
// one server, picked like gomemcache does (crc32 of the key modulo the list),
// and each server has its own connections and its own up/down state, so
// that a dead server stops only what lives on it.
type client struct {
	list     memcache.ServerList
	servers  []*server
	byAddr   map[string]*server
	metrics  *Metrics
	logger   *zap.Logger
	onChange func(addr string, up bool)
}

// server is one memcached server.
type server struct {
	c       *client
	addr    string
	mc      *memcache.Client
	down    atomic.Bool
	lastTry atomic.Int64 // Unix nanoseconds of the last attempt while down
	mu      sync.Mutex   // serialises state changes and their log lines
}

// newClient checks the server list and builds the clients. It does not
// connect: a config that is only validated never reaches memcached.
func newClient(addrs []string, m *Metrics, logger *zap.Logger) (*client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no memcached servers")
	}
	c := &client{metrics: m, logger: logger, byAddr: make(map[string]*server)}
	if err := c.list.SetServers(addrs...); err != nil {
		return nil, fmt.Errorf("memcached servers %v: %w", addrs, err)
	}
	err := c.list.Each(func(a net.Addr) error {
		var one memcache.ServerList
		if err := one.SetServers(a.String()); err != nil {
			return err
		}
		mc := memcache.NewFromSelector(&one)
		mc.Timeout = requestTimeout
		mc.MaxIdleConns = maxIdleConns
		s := &server{c: c, addr: a.String(), mc: mc}
		c.servers = append(c.servers, s)
		c.byAddr[s.addr] = s
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("memcached servers %v: %w", addrs, err)
	}
	return c, nil
}

// route returns the server that holds key: all the keys of one partition,
// one node's snapshot or one room's history are routed by one key, so that
// they live on one server.
func (c *client) route(key string) *server {
	a, err := c.list.PickServer(key)
	if err == nil {
		if s := c.byAddr[a.String()]; s != nil {
			return s
		}
	}
	return c.servers[0]
}

// up reports whether every server answered its last request.
func (c *client) up() bool {
	for _, s := range c.servers {
		if s.down.Load() {
			return false
		}
	}
	return true
}

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
		errors.Is(err, memcache.ErrNoServers) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, errServerDown)
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

// isMiss reports whether err is a cache miss, through do's wrapping.
func isMiss(err error) bool { return errors.Is(err, memcache.ErrCacheMiss) }

// usable reports whether a request to s is worth trying now: it is up, or
// due for a probe.
func (s *server) usable() bool {
	return !s.down.Load() || time.Since(time.Unix(0, s.lastTry.Load())) >= downProbe
}

// do runs one request. After memcached restarts, each pooled connection
// fails once with EOF: the request is retried on the next one, up to the
// size of the pool, and once more for any other failure, before the server
// counts as down. While down, requests fail at once, and the server is
// probed in the background at most every downProbe: a frozen server costs
// its timeout to a probe, never to a request of the poller or the
// publisher, which would hold up the rooms of the other servers.
func (s *server) do(op string, f func() error) error {
	if s.down.Load() {
		last := s.lastTry.Load()
		if time.Since(time.Unix(0, last)) >= downProbe && s.lastTry.CompareAndSwap(last, time.Now().UnixNano()) {
			go s.probe()
		}
		return fmt.Errorf("memcached %s on %s: %w", op, s.addr, errServerDown)
	}
	s.c.metrics.request(op)
	err := f()
	for stale := 0; staleConn(err) && stale < maxIdleConns; stale++ {
		err = f()
	}
	if unavailable(err) && !s.down.Load() {
		err = f()
	}
	switch {
	case answer(err):
		s.setDown(false, op, nil)
	case unavailable(err):
		s.c.metrics.error()
		s.lastTry.Store(time.Now().UnixNano())
		s.setDown(true, op, err)
	default:
		// The server answered, with an error (a value too large, a
		// corrupt counter): it is up, but the request failed.
		s.c.metrics.error()
		s.setDown(false, op, nil)
		s.c.logger.Warn("memcached request failed", zap.String("server", s.addr), zap.String("op", op), zap.Error(err))
	}
	if err != nil {
		return fmt.Errorf("memcached %s on %s: %w", op, s.addr, err)
	}
	return nil
}

// probe asks a down server whether it is back; when it is, the loops
// waiting for it are woken (onChange) and requests go to it again.
func (s *server) probe() {
	err := s.mc.Ping()
	for stale := 0; staleConn(err) && stale < maxIdleConns; stale++ {
		err = s.mc.Ping()
	}
	if err == nil {
		s.setDown(false, "probe", nil)
		return
	}
	s.lastTry.Store(time.Now().UnixNano())
}

// setDown records the state and logs only its changes.
func (s *server) setDown(down bool, op string, err error) {
	if s.down.Load() == down {
		return
	}
	s.mu.Lock()
	changed := s.down.Load() != down
	if changed {
		s.down.Store(down)
		if down {
			s.c.logger.Warn("memcached unreachable: what lives on this server waits until it returns, rooms chat locally",
				zap.String("server", s.addr), zap.String("op", op), zap.Error(err))
		} else {
			s.c.logger.Info("memcached reachable again: rejoining the cluster", zap.String("server", s.addr))
		}
	}
	s.mu.Unlock()
	if changed && s.c.onChange != nil {
		s.c.onChange(s.addr, !down)
	}
}

func (s *server) get(key string) (*memcache.Item, error) {
	var it *memcache.Item
	err := s.do("get", func() (err error) { it, err = s.mc.Get(key); return err })
	return it, err
}

// getMulti reads keys in requests of at most maxMultiKeys.
func (s *server) getMulti(keys []string) (map[string]*memcache.Item, error) {
	out := make(map[string]*memcache.Item)
	for len(keys) > 0 {
		n := min(len(keys), maxMultiKeys)
		var items map[string]*memcache.Item
		err := s.do("get_multi", func() (err error) { items, err = s.mc.GetMulti(keys[:n]); return err })
		if err != nil {
			return out, err
		}
		for k, it := range items {
			out[k] = it
		}
		keys = keys[n:]
	}
	return out, nil
}

func (s *server) set(it *memcache.Item) error {
	return s.do("set", func() error { return s.mc.Set(it) })
}

func (s *server) add(it *memcache.Item) error {
	return s.do("add", func() error { return s.mc.Add(it) })
}

func (s *server) cas(it *memcache.Item) error {
	return s.do("cas", func() error { return s.mc.CompareAndSwap(it) })
}

func (s *server) touch(key string, seconds int32) error {
	return s.do("touch", func() error { return s.mc.Touch(key, seconds) })
}

func (s *server) del(key string) error {
	return s.do("delete", func() error { return s.mc.Delete(key) })
}

func (s *server) incr(key string, delta uint64) (uint64, error) {
	var n uint64
	err := s.do("incr", func() (err error) { n, err = s.mc.Increment(key, delta); return err })
	return n, err
}

// getFrom reads keys from the servers that hold them, one multi-get per
// server. Keys of a server that cannot be reached are listed in failed, so
// that the caller tells "missing" from "unknown".
func getFrom(byServer map[*server][]string) (items map[string]*memcache.Item, failed map[string]bool) {
	type reply struct {
		keys []string
		got  map[string]*memcache.Item
		err  error
	}
	// One goroutine per server when there are several, so that a frozen
	// server's timeout does not hold up the answers of the others.
	replies := make(chan reply, len(byServer))
	for s, keys := range byServer {
		if len(byServer) == 1 {
			got, err := s.getMulti(keys)
			replies <- reply{keys, got, err}
			continue
		}
		go func() {
			got, err := s.getMulti(keys)
			replies <- reply{keys, got, err}
		}()
	}
	items = make(map[string]*memcache.Item)
	for range len(byServer) {
		a := <-replies
		for k, it := range a.got {
			items[k] = it
		}
		if a.err != nil {
			if failed == nil {
				failed = make(map[string]bool)
			}
			for _, k := range a.keys {
				if _, ok := a.got[k]; !ok {
					failed[k] = true
				}
			}
		}
	}
	return items, failed
}
