// Package wsio is the chatroom's WebSocket transport: the socket under a
// gorilla/websocket connection, made cheap to hold when idle and cheap to
// write to when busy.
//
//   - Writes are batched (batchconn.go): a writer with several frames queued
//     sends them in one system call, through a buffer borrowed from a pool
//     shared by every connection (pool.go), so an idle connection holds no
//     write buffer.
//
//   - Frames are encoded once (frame.go) and shared by every connection
//     they go to; the handshake response waits in the first batch, so a
//     joiner's handshake and first frames take one system call.
//
//   - Reads can park (poller_linux.go): a connection with nothing to read
//     needs no goroutine; one epoll instance per Transport wakes its owner
//     when the client sends something.
//
//   - Parking needs to know what gorilla has buffered, which gorilla does not
//     export: gorilla.go finds its read buffer, and control.go consumes ping
//     and pong frames beside gorilla. Both fail safe (no parking), and
//     TestParkingAssumption fails loudly when a gorilla upgrade breaks them
//     (TestDeflateAssumption for what gorilla.go reads for compression).
//
//   - Compression (permessage-deflate, RFC 7692) is negotiated when the
//     Upgrader has it on and the client offers it (negotiate.go), with no
//     context takeover. A Frame is compressed once, by the first writer of a
//     connection that negotiated it, and its compressed bytes shared by all
//     such connections; the others get the plain frame. The compressors are
//     the Transport's (deflate.go), not a connection's. gorilla inflates
//     what clients compress; ReadMessage (read.go) stops a message at the
//     limit as inflated, not as sent.
//
// The member (the root package's conn) uses only a Conn's methods and
// Frame: write a batch of frames, close with a code, read messages, and
// ask to be woken when readable.
package wsio
