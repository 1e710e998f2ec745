//go:build !race

package chatroom

const raceEnabled = false
