package main

import (
	"bytes"
	"fmt"
	"strconv"
)

// A protocol knows how to wrap a chat text into the frame a client sends
// and how to find the chat texts in a frame the server sends.
type protocol struct {
	name string
	// echo is whether the sender receives its own message.
	echo bool
	// encode appends the frame for text to dst.
	encode func(dst []byte, text []byte) []byte
	// each calls fn with every chat text found in frame.
	each func(frame []byte, fn func(text []byte))
}

var protocols = map[string]protocol{
	"ours": {
		name: "ours",
		echo: false,
		encode: func(dst, text []byte) []byte {
			dst = append(dst, `{"msg":"`...)
			dst = append(dst, text...)
			return append(dst, `"}`...)
		},
		each: eachOurs,
	},
	"baseline": {
		name: "baseline",
		echo: true,
		encode: func(dst, text []byte) []byte {
			return append(dst, text...)
		},
		each: func(frame []byte, fn func([]byte)) {
			for len(frame) > 0 {
				line, rest, _ := bytes.Cut(frame, []byte{'\n'})
				fn(line)
				frame = rest
			}
		},
	},
}

var (
	fromIDKey = []byte(`"from_id":`)
	msgKey    = []byte(`"msg":"`)
)

// eachOurs finds the text of a chat frame; server frames (welcome, online,
// join, leave) carry no from_id and are skipped. The load tool's texts hold
// no characters that JSON escapes, so the text ends at the next quote.
func eachOurs(frame []byte, fn func([]byte)) {
	if !bytes.Contains(frame, fromIDKey) {
		return
	}
	i := bytes.Index(frame, msgKey)
	if i < 0 {
		return
	}
	text := frame[i+len(msgKey):]
	if j := bytes.IndexByte(text, '"'); j >= 0 {
		fn(text[:j])
	}
}

// A chat text is "<sender> <seq> <sent ns> " padded with 'x' to the payload
// size; <sent ns> counts from the run's start on the monotonic clock.
func makeText(dst []byte, sender int, seq uint64, sentNS int64, size int) []byte {
	dst = strconv.AppendInt(dst, int64(sender), 10)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, sentNS, 10)
	dst = append(dst, ' ')
	for len(dst) < size {
		dst = append(dst, 'x')
	}
	return dst
}

// parseText reads back what makeText wrote, without allocating.
func parseText(text []byte) (sender int, seq uint64, sentNS int64, err error) {
	var f [3]uint64
	i := 0
	for k := range f {
		start := i
		for i < len(text) && text[i] >= '0' && text[i] <= '9' {
			f[k] = f[k]*10 + uint64(text[i]-'0')
			i++
		}
		if i == start || i >= len(text) || text[i] != ' ' {
			return 0, 0, 0, fmt.Errorf("not a chatbench message: %.40q", text)
		}
		i++
	}
	return int(f[0]), f[1], int64(f[2]), nil
}
