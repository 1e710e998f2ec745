package chatroom

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-chatroom/chatroom/internal/cluster"
	"github.com/caddy-chatroom/chatroom/internal/memcached"
	"github.com/caddy-chatroom/chatroom/internal/wsio"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the handler's settings (the README's Caddyfile table).
const (
	DefaultPrefix         = "chatroom:"
	DefaultRoom           = "lobby"
	DefaultMaxMessageSize = 8 << 10
	DefaultRateMessages   = 20
	DefaultRateInterval   = time.Second
	DefaultSendQueue      = 256
	DefaultPingInterval   = 25 * time.Second
	DefaultTTL            = 30 * time.Second
	DefaultPresenceLimit  = 100
	DefaultMaxRooms       = 10000

	// DefaultCompressionMinSize is the shortest frame sent compressed
	// when `compression` is on without a size.
	DefaultCompressionMinSize = 128
)

// MaxHistory is the largest `history` a room may replay.
const MaxHistory = 1000

// MaxCompressionMinSize is the largest `compression` size: 1 GiB, the
// largest max_message_size.
const MaxCompressionMinSize = 1 << 30

// MaxPresenceLimit is the largest `presence_limit`: the online list a
// joiner is sent holds at most that many members.
const MaxPresenceLimit = 10000

// Handler is the `chatroom` HTTP handler: it turns a WebSocket upgrade
// request into a member of a chat room, and passes every other request on to
// the next handler.
type Handler struct {
	// Memcached lists the memcached servers (host:port) shared by every
	// instance of the cluster, in the same order on every instance. Empty
	// means the embedded registry: one instance, nothing shared.
	Memcached []string `json:"memcached,omitempty"`

	// Prefix is the namespace of every memcached key this handler writes.
	// Default: "chatroom:".
	Prefix string `json:"prefix,omitempty"`

	// Room is the room name for a connection; placeholders are replaced
	// per request, e.g. "{http.request.uri.query.room}". A name that
	// resolves empty is "lobby". Default: "lobby".
	Room string `json:"room,omitempty"`

	// User is the authenticated display name of the connection, e.g.
	// "{http.auth.user.id}". When it resolves non-empty the client cannot
	// change its name. Default: none.
	User string `json:"user,omitempty"`

	// Origins lists the allowed Origin header values: scheme://host[:port]
	// (compared with default ports filled in, so https://x and
	// https://x:443 are one origin), scheme://*.domain[:port] for any
	// subdomain of domain, or "*" for any. Default: the request's own host.
	// Requests without an Origin header (non-browser clients) are always
	// allowed.
	Origins []string `json:"origins,omitempty"`

	// History is how many of a room's last chat messages a joining client
	// is sent. Default: 0.
	History int `json:"history,omitempty"`

	// MaxMessageSize is the largest frame, in bytes, a client may send; a
	// larger one closes the connection with 1009. Default: 8 KiB.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// RateLimit is how many chat messages a connection may send per
	// interval. Default: 20 per 1s.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	// SendQueue is how many outgoing frames a connection may have waiting
	// before it counts as a slow consumer and is closed. Default: 256.
	SendQueue int `json:"send_queue,omitempty"`

	// MaxConnections is how many WebSocket connections this instance
	// accepts; more are answered 503. 0 is no limit. Default: 0.
	MaxConnections int `json:"max_connections,omitempty"`

	// PingInterval is the server's ping period; a connection silent (no
	// pong or frame) for two periods is closed. Default: 25s.
	PingInterval caddy.Duration `json:"ping_interval,omitempty"`

	// TTL is the lifetime of this instance's memcached keys, refreshed
	// while it runs. Default: 30s.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// ResumeWindow is how long a room's chat messages stay available to a
	// client that reconnects with `since`, at most 24h; the memcached room
	// log keeps its entries at least that long. Default: 2m.
	ResumeWindow caddy.Duration `json:"resume_window,omitempty"`

	// PresenceLimit is the largest room, in members across the cluster,
	// that gets full presence: the online list and join, leave and nick
	// events. A bigger room gets its member count instead (see the README,
	// "Big rooms"). A room takes the value of the handler whose connection
	// opened it. Default: 100.
	PresenceLimit int `json:"presence_limit,omitempty"`

	// MaxRooms is how many rooms this instance hosts at once; a join that
	// would open one more is answered 503. A pointer, so that 0 (no limit)
	// can be told from unset. Default: 10000.
	MaxRooms *int `json:"max_rooms,omitempty"`

	// RemotePresence caps what this instance keeps of the other
	// instances' presence snapshots, all of them together (with
	// memcached): the memory a forged snapshot can take is bounded by it,
	// not by memcached's size. Default, and the most allowed: 100000
	// rooms and 50000 listed members. Handlers on one registry share it:
	// the largest any of them asks for applies.
	RemotePresence *RemotePresence `json:"remote_presence,omitempty"`

	// Compression turns on permessage-deflate (RFC 7692) for clients that
	// offer it, with no context takeover either way; browsers offer it.
	// A frame to many members is compressed once. Default: off.
	Compression *Compression `json:"compression,omitempty"`

	hub       *hub
	transport *wsio.Transport // the sockets of the hub's connections
	hubKey    string
	ref       *handlerRef // this handler's place, known across reloads (reload.go)
	metrics   *metrics
	logger    *zap.Logger
	upgrader  *wsio.Upgrader
	opts      connOptions
	origins   originSet
}

// Compression is the `compression` setting: permessage-deflate for the
// clients that offer it.
type Compression struct {
	// MinSize is the shortest frame, in bytes, sent compressed; shorter
	// ones go plain, where deflate saves a few bytes at most and costs a
	// compression each. Default: 128.
	MinSize int `json:"min_size,omitempty"`
}

// RateLimit is a number of chat messages per interval.
type RateLimit struct {
	// Messages is how many chat messages fit in one interval.
	Messages int `json:"messages,omitempty"`
	// Interval is the length of the interval.
	Interval caddy.Duration `json:"interval,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.chatroom",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills in defaults and joins the hub for this registry
// configuration, which an earlier config may have made already.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.setDefaults()
	if err := h.Validate(); err != nil {
		return err
	}

	m, err := loadMetrics()
	if err != nil {
		return fmt.Errorf("loading chatroom metrics: %w", err)
	}
	h.metrics = m
	if err := m.register(ctx.GetMetricsRegistry()); err != nil {
		return err
	}

	h.hubKey = h.registryKey()
	h.hub, h.transport, err = loadHub(h.hubKey, m, h.logger, h.newRegistry)
	if err != nil {
		// The metrics are released by Cleanup, which Caddy calls after a
		// failed Provision too: releasing them here as well would drop a
		// reference that another config holds.
		return fmt.Errorf("starting chat registry: %w", err)
	}
	h.hub.keepHistory(h.History)
	h.hub.keepWindow(time.Duration(h.ResumeWindow))
	// The registry outlives this handler and may have been made by
	// another with a smaller limit: what this one accepts from its
	// clients must reach the other instances.
	h.hub.acceptMessages(int(h.MaxMessageSize))
	h.hub.acceptPresence(h.remotePresence())
	mods := ctx.Modules()
	if len(mods) > 0 && any(mods[len(mods)-1]) == any(h) {
		mods = mods[:len(mods)-1] // the modules around h, outermost first
	}
	h.ref = h.hub.attach(func() string { return handlerLocation(mods, h) })

	h.origins = newOriginSet(h.Origins)
	h.upgrader = wsio.NewUpgrader(h.compression())
	h.opts = connOptions{
		history:      h.History,
		sendQueue:    h.SendQueue + h.History + 2, // a joiner's burst (welcome, online list, history) is not slowness
		pingInterval: time.Duration(h.PingInterval),
		rateLimit:    rate.Every(time.Duration(h.RateLimit.Interval) / time.Duration(h.RateLimit.Messages)),
		rateBurst:    h.RateLimit.Messages,
		rateInterval: time.Duration(h.RateLimit.Interval),
		rateText:     strconv.Itoa(h.RateLimit.Messages) + " per " + time.Duration(h.RateLimit.Interval).String(),

		presenceLimit: h.PresenceLimit,
	}
	return nil
}

func (h *Handler) setDefaults() {
	if h.Prefix == "" {
		h.Prefix = DefaultPrefix
	}
	if h.Room == "" {
		h.Room = DefaultRoom
	}
	if h.MaxMessageSize == 0 {
		h.MaxMessageSize = DefaultMaxMessageSize
	}
	if h.RateLimit == nil {
		h.RateLimit = &RateLimit{}
	}
	if h.RateLimit.Messages == 0 {
		h.RateLimit.Messages = DefaultRateMessages
	}
	if h.RateLimit.Interval == 0 {
		h.RateLimit.Interval = caddy.Duration(DefaultRateInterval)
	}
	if h.SendQueue == 0 {
		h.SendQueue = DefaultSendQueue
	}
	if h.PingInterval == 0 {
		h.PingInterval = caddy.Duration(DefaultPingInterval)
	}
	if h.TTL == 0 {
		h.TTL = caddy.Duration(DefaultTTL)
	}
	if h.ResumeWindow == 0 {
		h.ResumeWindow = caddy.Duration(DefaultResumeWindow)
	}
	if h.PresenceLimit == 0 {
		h.PresenceLimit = DefaultPresenceLimit
	}
	if h.MaxRooms == nil {
		n := DefaultMaxRooms
		h.MaxRooms = &n
	}
	if h.Compression != nil && h.Compression.MinSize == 0 {
		h.Compression.MinSize = DefaultCompressionMinSize
	}
}

// compression is the transport's form of the `compression` setting.
func (h *Handler) compression() wsio.Compression {
	if h.Compression == nil {
		return wsio.Compression{}
	}
	return wsio.Compression{Enabled: true, MinSize: h.Compression.MinSize}
}

// Validate checks the settings; it runs after Provision has filled in
// defaults.
func (h *Handler) Validate() error {
	for _, addr := range h.Memcached {
		if err := checkHostPort(addr); err != nil {
			return err
		}
	}
	for _, o := range h.Origins {
		if err := checkOrigin(o); err != nil {
			return err
		}
	}
	if h.Prefix != "" && !validKeyPart(h.Prefix) {
		return fmt.Errorf("prefix %q must be 1 to 100 printable characters without spaces", h.Prefix)
	}
	switch {
	case h.History < 0 || h.History > MaxHistory:
		return fmt.Errorf("history must be between 0 and %d, got %d", MaxHistory, h.History)
	case h.MaxMessageSize < 0:
		return fmt.Errorf("max_message_size must be positive, got %d", h.MaxMessageSize)
	case h.RateLimit != nil && (h.RateLimit.Messages < 0 || h.RateLimit.Interval < 0):
		return fmt.Errorf("rate_limit must be positive")
	case h.SendQueue < 0:
		return fmt.Errorf("send_queue must be positive, got %d", h.SendQueue)
	case h.MaxConnections < 0:
		return fmt.Errorf("max_connections must be 0 or more, got %d", h.MaxConnections)
	case h.PingInterval < 0:
		return fmt.Errorf("ping_interval must be positive")
	case h.TTL < 0:
		return fmt.Errorf("ttl must be positive")
	case h.ResumeWindow < 0 || time.Duration(h.ResumeWindow) > MaxResumeWindow:
		return fmt.Errorf("resume_window must be positive and at most %v, got %v", MaxResumeWindow, time.Duration(h.ResumeWindow))
	case h.PresenceLimit < 0 || h.PresenceLimit > MaxPresenceLimit:
		return fmt.Errorf("presence_limit must be between 1 and %d, got %d", MaxPresenceLimit, h.PresenceLimit)
	case h.MaxRooms != nil && *h.MaxRooms < 0:
		return fmt.Errorf("max_rooms must be 0 or more, got %d", *h.MaxRooms)
	case h.RemotePresence != nil && (h.RemotePresence.Rooms < 1 || h.RemotePresence.Rooms > cluster.MaxRooms ||
		h.RemotePresence.Members < 1 || h.RemotePresence.Members > cluster.MaxMembers):
		return fmt.Errorf("remote_presence wants 1 to %d rooms and 1 to %d members, got %d and %d",
			cluster.MaxRooms, cluster.MaxMembers, h.RemotePresence.Rooms, h.RemotePresence.Members)
	case h.Compression != nil && (h.Compression.MinSize < 0 || h.Compression.MinSize > MaxCompressionMinSize):
		return fmt.Errorf("compression min_size must be between 1 and %d bytes, got %d", MaxCompressionMinSize, h.Compression.MinSize)
	}
	return nil
}

// checkHostPort checks a memcached address.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("memcached server %q: want host:port: %w", addr, err)
	}
	if host == "" {
		return fmt.Errorf("memcached server %q: missing host", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("memcached server %q: bad port %q", addr, port)
	}
	return nil
}

// validKeyPart reports whether s can stand in a memcached key: printable
// ASCII without spaces, short enough to leave room for the rest of the key.
func validKeyPart(s string) bool {
	if len(s) == 0 || len(s) > 100 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// registryKey identifies the registry configuration: handlers with the same
// key share one hub, and so one set of rooms.
func (h *Handler) registryKey() string {
	if len(h.Memcached) == 0 {
		// The prefix separates embedded hubs too, so that it separates
		// rooms whichever the registry.
		return "chatroom.hub.embedded|" + h.Prefix
	}
	return fmt.Sprintf("chatroom.hub.memcached|%s|%s|%s", strings.Join(h.Memcached, ","), h.Prefix, time.Duration(h.TTL))
}

// newRegistry makes the registry the settings ask for.
func (h *Handler) newRegistry() (registry, error) {
	if len(h.Memcached) == 0 {
		return newEmbeddedRegistry(), nil
	}
	b, err := memcached.New(memcached.Config{
		Servers:        h.Memcached,
		Prefix:         h.Prefix,
		TTL:            time.Duration(h.TTL),
		MaxMessageSize: int(h.MaxMessageSize),
		ResumeWindow:   time.Duration(h.ResumeWindow),
		History:        newEmbeddedRegistry(),
		Metrics:        h.metrics.memcached(),
	}, h.logger)
	if err != nil {
		return nil, fmt.Errorf("memcached registry: %w", err)
	}
	return b, nil
}

// Cleanup releases this config's use of the hub; the last config to go
// closes its clients and deregisters the instance.
func (h *Handler) Cleanup() error {
	if h.hub != nil {
		if h.ref != nil {
			h.hub.detach(h.ref)
		}
		if _, err := pool.Delete(h.hubKey); err != nil {
			return fmt.Errorf("releasing chat hub: %w", err)
		}
	}
	if h.metrics != nil {
		_, _ = pool.Delete(metricsKey)
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

// RemotePresence is what an instance keeps of the other instances'
// presence, all of them together.
type RemotePresence struct {
	// Rooms is the most rooms with members elsewhere that are kept.
	Rooms int `json:"rooms"`
	// Members is the most members elsewhere that are listed by name.
	Members int `json:"members"`
}

// remotePresence is the handler's remote_presence, the maxima when unset.
func (h *Handler) remotePresence() RemotePresence {
	if h.RemotePresence != nil {
		return *h.RemotePresence
	}
	return RemotePresence{Rooms: cluster.MaxRooms, Members: cluster.MaxMembers}
}
