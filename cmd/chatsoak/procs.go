package main

// The processes under soak (internal/testenv): a memcached that can be
// restarted on its port, and a Caddy with the chatroom module whose admin
// API gives its metrics.

import (
	"fmt"

	"github.com/caddy-chatroom/chatroom/internal/testenv"
)

func startMemcached(dir string) (*testenv.Memcached, error) {
	m, err := testenv.NewMemcached(dir, testenv.MemcachedOptions{MemoryMB: 64, Connections: 1024})
	if err != nil {
		return nil, fmt.Errorf("memcached is needed for the soak: %w", err)
	}
	return m, m.Start()
}

// caddy is the Caddy under soak.
type caddy struct {
	*testenv.Caddy
}

// siteConfig is the whole Caddyfile; tag changes a response header only,
// so that a reload with another tag leaves the chatroom config unchanged.
func (c *caddy) siteConfig(memcachedAddr, tag string) string {
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	grace_period 2s
}

http://127.0.0.1:%d {
	header X-Soak %s
	chatroom /ws {
		memcached %s
		room {query.room}
		rate_limit 100 1s
		ping_interval 5s
	}
	respond "soak"
}
`, c.Admin, c.Port, tag, memcachedAddr)
}

func startCaddy(bin, dir, memcachedAddr string) (*caddy, error) {
	tc, err := testenv.NewCaddy(bin, dir)
	if err != nil {
		return nil, err
	}
	c := &caddy{tc}
	return c, c.Start(c.siteConfig(memcachedAddr, "0"))
}

// reload loads the config with another tag through the admin API, as
// `caddy reload` does.
func (c *caddy) reload(memcachedAddr, tag string) error {
	return c.Reload(c.siteConfig(memcachedAddr, tag))
}
