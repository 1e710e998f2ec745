//go:build !race

package testenv

// RaceEnabled reports whether this binary runs with the race detector, so
// that the Caddy under test is built with it too.
const RaceEnabled = false
