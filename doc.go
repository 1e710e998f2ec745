// Package chatroom is a Caddy HTTP handler that turns a matched WebSocket
// upgrade into a member of a chat room. Rooms live in one Caddy instance
// (the embedded registry) or span several instances that share a memcached.
package chatroom
