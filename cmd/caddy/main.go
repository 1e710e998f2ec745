// Command caddy is Caddy with the chatroom module built in: the binary that
// the README's example and the integration tests run. It is what
// `xcaddy build --with github.com/caddy-chatroom/chatroom` produces, without
// needing xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-chatroom/chatroom"
)

func main() {
	caddycmd.Main()
}
