package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/gorilla/websocket"
)

// checkLoopback refuses any URL whose host is not a loopback address: the
// tool is for measuring, not for loading other people's servers.
func checkLoopback(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parsing -url: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, fmt.Errorf("-url %q: want ws:// or wss://", raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("resolving %q: %w", u.Hostname(), err)
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return nil, fmt.Errorf("-url %q: %s is not a loopback address; chatbench only loads loopback servers", raw, a.IP)
		}
	}
	return u, nil
}

// dialer is the clients' dialer: small buffers, so that thousands of idle
// clients stay cheap for the load tool itself.
var dialer = websocket.Dialer{
	HandshakeTimeout: 10 * time.Second,
	ReadBufferSize:   2048,
	WriteBufferSize:  512,
}

// deflateDialer is dialer offering permessage-deflate (-deflate): gorilla's
// client then inflates what it is sent and compresses what it sends, as a
// browser does.
var deflateDialer = func() websocket.Dialer {
	d := dialer
	d.EnableCompression = true
	return d
}()

// dialAll opens n connections, at most parallel at a time, each to the URL
// that urlFor returns. It stops at the first failure.
func dialAll(n, parallel int, urlFor func(i int) string) ([]*websocket.Conn, error) {
	return dialAllWith(&dialer, n, parallel, urlFor)
}

// dialerFor is the dialer of clients that offer permessage-deflate or not.
func dialerFor(deflate bool) *websocket.Dialer {
	if deflate {
		return &deflateDialer
	}
	return &dialer
}

// dialAllWith is dialAll with the given dialer.
func dialAllWith(d *websocket.Dialer, n, parallel int, urlFor func(i int) string) ([]*websocket.Conn, error) {
	conns := make([]*websocket.Conn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, parallel)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			ws, resp, err := d.Dial(urlFor(i), nil)
			if err != nil {
				if resp != nil {
					err = fmt.Errorf("%w (HTTP %s)", err, resp.Status)
				}
				errs <- fmt.Errorf("dialing client %d: %w", i, err)
				return
			}
			conns[i] = ws
		}()
		select {
		case err := <-errs:
			closeAll(conns, time.Second)
			return nil, err
		default:
		}
	}
	for i := 0; i < parallel; i++ {
		sem <- struct{}{}
	}
	select {
	case err := <-errs:
		closeAll(conns, time.Second)
		return nil, err
	default:
	}
	return conns, nil
}

// closeAll sends every open connection a normal close and closes it.
func closeAll(conns []*websocket.Conn, wait time.Duration) {
	sem := make(chan struct{}, 64)
	done := make(chan struct{}, len(conns))
	n := 0
	for _, ws := range conns {
		if ws == nil {
			continue
		}
		n++
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; done <- struct{}{} }()
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bench done"), time.Now().Add(wait))
			_ = ws.Close()
		}()
	}
	for i := 0; i < n; i++ {
		<-done
	}
}

// roomURL adds room=<name> to base's query.
func roomURL(base *url.URL, param, room string) string {
	u := *base
	q := u.Query()
	q.Set(param, room)
	u.RawQuery = q.Encode()
	return u.String()
}
