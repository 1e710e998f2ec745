// Package testenv starts the real processes the chatroom is tested against:
// a Caddy binary built from cmd/caddy (with the race detector when asked), a
// memcached that can be killed and restarted on its port, free loopback
// ports for both, their captured output and the Caddy admin /metrics.
//
// The integration tests of every package and cmd/chatsoak share it so that
// none copies another. The core functions return errors (a soak is not a
// test); the few that take a testing.TB skip or fail the test the way every
// integration test must (StartMemcached with its TestMemcached,
// CaddyBinary, AwaitCondition).
package testenv
