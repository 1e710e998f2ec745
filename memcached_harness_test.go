package chatroom

// The memcached side of the integration harness: Caddy instances whose
// chatroom shares the memcached servers (internal/testenv) a test started.

import (
	"fmt"
	"strings"
	"testing"
)

// startCaddyCluster starts a Caddy process whose chatroom at /ws uses the
// memcached servers at addrs; extra is added to the chatroom block (e.g.
// "ttl 2s\n\thistory 10"). Its page is served from {{root}}.
func startCaddyCluster(t testing.TB, extra string, addrs ...string) *caddyProc {
	t.Helper()
	return startCaddy(t, clusterSiteBody(extra, addrs...))
}

// clusterSiteBody is the site body of a cluster member, for startCaddy and
// reload.
func clusterSiteBody(extra string, addrs ...string) string {
	return fmt.Sprintf("\troot * {{root}}\n\tchatroom /ws {\n\t\tmemcached %s\n\t\troom {query.room}\n\t\t%s\n\t}\n\tfile_server",
		strings.Join(addrs, " "), extra)
}
