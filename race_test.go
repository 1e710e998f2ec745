//go:build race

package chatroom

// raceEnabled builds the Caddy under test with the race detector too.
const raceEnabled = true
