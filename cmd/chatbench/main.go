// Command chatbench loads a chat WebSocket endpoint on loopback and reports
// what it delivered: deliveries per second, loss, latency and, given the
// server's process id, the server's CPU time and memory.
//
// It speaks two protocols: "ours" (the chatroom module: JSON frames with a
// "msg" field, the sender does not get its own message) and "baseline"
// (gorilla/websocket's examples/chat: raw text echoed to every client, the
// sender included, several messages possibly packed into one frame separated
// by newlines). It counts deliveries, not frames.
//
// Usage:
//
//	chatbench load  -url ws://127.0.0.1:8080/ws -clients 1000 -senders 10 -rate 20 -duration 20s
//	chatbench load  -url ws://127.0.0.1:8080/ws -clients 200 -senders 4 -window 16 -duration 15s
//	chatbench idle  -url ws://127.0.0.1:8080/ws -clients 10000 -hold 20s -pid 1234
//	chatbench storm -url ws://127.0.0.1:8080/ws -churn 800 -duration 15s -pid 1234
//	chatbench wire  -url ws://127.0.0.1:8080/ws -history 50 -members 100
//	chatbench table results.jsonl
//	chatbench cluster -caddy ./caddy -label after -json cluster.jsonl
//	chatbench clustertable cluster.jsonl
//
// Every loop is bounded in count and time, and only loopback addresses are
// accepted.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "load":
		err = runLoad(os.Args[2:])
	case "idle":
		err = runIdle(os.Args[2:])
	case "cluster":
		err = runCluster(os.Args[2:])
	case "clustertable":
		err = runClusterTable(os.Args[2:])
	case "hold":
		err = runHold(os.Args[2:])
	case "storm":
		err = runStorm(os.Args[2:])
	case "wire":
		err = runWire(os.Args[2:])
	case "table":
		err = runTable(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chatbench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: chatbench load|idle|storm|wire|cluster [flags]   (chatbench load -h for flags)
       chatbench table [-a ours] [-b baseline] results.jsonl...
       chatbench cluster -caddy <binary> [flags]; chatbench clustertable results.jsonl...`)
	os.Exit(2)
}
