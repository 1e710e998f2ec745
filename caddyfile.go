package chatroom

import (
	"strconv"

	"github.com/caddy-chatroom/chatroom/internal/cluster"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("chatroom", parseCaddyfile)
	// After encode: so it needs no route block or global order, runs after
	// basic_auth and forward_auth, and comes before respond, handle and
	// file_server, which would otherwise answer the upgrade request.
	httpcaddyfile.RegisterDirectiveOrder("chatroom", httpcaddyfile.After, "encode")
}

// parseCaddyfile sets up a Handler from the `chatroom` directive.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var c Handler
	err := c.UnmarshalCaddyfile(h.Dispenser)
	return &c, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	chatroom [<matcher>] {
//		memcached <host:port>...
//		prefix <string>
//		room <template>
//		user <template>
//		origins <origin>...
//		history <n>
//		max_message_size <size>
//		rate_limit <n> <duration>
//		send_queue <n>
//		max_connections <n>
//		ping_interval <duration>
//		ttl <duration>
//		resume_window <duration>
//		presence_limit <n>
//		max_rooms <n>
//		remote_presence <rooms> <members>
//		compression [<min_size>]
//	}
func (c *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.Errf("chatroom takes no arguments besides a matcher, got %q; put settings in a block", d.Val())
	}
	for d.NextBlock(0) {
		sub := d.Val()
		switch sub {
		case "memcached":
			addrs := d.RemainingArgs()
			if len(addrs) == 0 {
				return d.Errf("memcached: want at least one host:port")
			}
			for _, a := range addrs {
				if err := checkHostPort(a); err != nil {
					return d.Errf("memcached: %v", err)
				}
			}
			c.Memcached = append(c.Memcached, addrs...)
		case "prefix":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if !validKeyPart(v) {
				return d.Errf("prefix: %q must be 1 to 100 printable characters without spaces", v)
			}
			c.Prefix = v
		case "room":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			c.Room = v
		case "user":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			c.User = v
		case "origins":
			origins := d.RemainingArgs()
			if len(origins) == 0 {
				return d.Errf("origins: want at least one origin (scheme://host[:port]) or *")
			}
			for _, o := range origins {
				if err := checkOrigin(o); err != nil {
					return d.Errf("origins: %v", err)
				}
			}
			c.Origins = append(c.Origins, origins...)
		case "history":
			n, err := intArg(d, 0, MaxHistory)
			if err != nil {
				return err
			}
			c.History = n
		case "max_message_size":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > 1<<30 {
				return d.Errf("max_message_size: bad size %q: want e.g. 8KiB, between 1B and 1GiB", v)
			}
			c.MaxMessageSize = int64(size)
		case "rate_limit":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("rate_limit: want <messages> <interval>, e.g. rate_limit 20 1s")
			}
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 {
				return d.Errf("rate_limit: bad message count %q: want a whole number of at least 1", args[0])
			}
			interval, err := caddy.ParseDuration(args[1])
			if err != nil || interval <= 0 {
				return d.Errf("rate_limit: bad interval %q: want a positive duration such as 1s", args[1])
			}
			c.RateLimit = &RateLimit{Messages: n, Interval: caddy.Duration(interval)}
		case "send_queue":
			n, err := intArg(d, 1, 1<<20)
			if err != nil {
				return err
			}
			c.SendQueue = n
		case "max_connections":
			n, err := intArg(d, 0, 1<<30)
			if err != nil {
				return err
			}
			c.MaxConnections = n
		case "ping_interval":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			c.PingInterval = dur
		case "ttl":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			c.TTL = dur
		case "resume_window":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			c.ResumeWindow = dur
		case "presence_limit":
			n, err := intArg(d, 1, MaxPresenceLimit)
			if err != nil {
				return err
			}
			c.PresenceLimit = n
		case "max_rooms":
			n, err := intArg(d, 0, 1<<30)
			if err != nil {
				return err
			}
			c.MaxRooms = &n
		case "remote_presence":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("remote_presence takes <rooms> <members>, got %d arguments", len(args))
			}
			rooms, err1 := strconv.Atoi(args[0])
			members, err2 := strconv.Atoi(args[1])
			if err1 != nil || err2 != nil || rooms < 1 || rooms > cluster.MaxRooms || members < 1 || members > cluster.MaxMembers {
				return d.Errf("remote_presence: bad numbers %q %q: want 1 to %d rooms and 1 to %d members", args[0], args[1], cluster.MaxRooms, cluster.MaxMembers)
			}
			c.RemotePresence = &RemotePresence{Rooms: rooms, Members: members}
		case "compression":
			comp, err := compressionArgs(d)
			if err != nil {
				return err
			}
			c.Compression = comp
		default:
			return d.Errf("unrecognized chatroom subdirective %q", sub)
		}
	}
	return nil
}

// compressionArgs reads `compression [<min_size>]`: on, sending frames
// from min_size bytes up compressed (DefaultCompressionMinSize without it).
func compressionArgs(d *caddyfile.Dispenser) (*Compression, error) {
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
		return &Compression{MinSize: DefaultCompressionMinSize}, nil
	case 1:
		size, err := humanize.ParseBytes(args[0])
		if err != nil || size == 0 || size > MaxCompressionMinSize {
			return nil, d.Errf("compression: bad minimum size %q: want a size such as 128 or 1KiB, from 1B to 1GiB", args[0])
		}
		return &Compression{MinSize: int(size)}, nil
	default:
		return nil, d.Errf("compression: want at most one argument, the smallest frame to compress (e.g. 128), got %d", len(args))
	}
}

// oneArg reads the single argument of the current subdirective.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	sub := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return "", d.Errf("%s: want exactly one argument, got %d", sub, len(args))
	}
	return args[0], nil
}

// intArg reads a whole number between lo and hi.
func intArg(d *caddyfile.Dispenser, lo, hi int) (int, error) {
	sub := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, d.Errf("%s: bad number %q: want a whole number from %d to %d", sub, v, lo, hi)
	}
	return n, nil
}

// durationArg reads a positive duration.
func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	sub := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s: bad duration %q: want a positive duration such as 25s", sub, v)
	}
	return caddy.Duration(dur), nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Handler)(nil)
