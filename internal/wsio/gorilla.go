package wsio

import (
	"bufio"
	"reflect"

	"github.com/gorilla/websocket"
)

// This file is the one place that looks inside gorilla's Conn, for what it
// does not export. Each look fails safe when a gorilla upgrade renames or
// retypes a field, and TestParkingAssumption or TestDeflateAssumption fails
// loudly then.

// gorillaField is the index of a pointer or func field of gorilla's Conn,
// nil when there is no such field.
func gorillaField(name string) []int {
	f, ok := reflect.TypeFor[websocket.Conn]().FieldByName(name)
	if !ok || f.Type.Kind() != reflect.Pointer && f.Type.Kind() != reflect.Func {
		return nil
	}
	return f.Index
}

// The fields looked at, found once: types do not change at run time.
var (
	fieldBR            = gorillaField("br")
	fieldMessageReader = gorillaField("messageReader")
	fieldCompressor    = gorillaField("newCompressionWriter")
)

// readerOf returns gorilla's read buffer of ws when it is br, the one the
// hijacker made: the reader must see what gorilla has buffered before it
// may park, so parking is only on when it is; nil otherwise (no parking).
func readerOf(ws *websocket.Conn, br *bufio.Reader) *bufio.Reader {
	if br == nil || fieldBR == nil {
		return nil
	}
	f := reflect.ValueOf(ws).Elem().FieldByIndex(fieldBR)
	if f.Pointer() != reflect.ValueOf(br).Pointer() {
		return nil
	}
	return br
}

// negotiatedDeflate reports whether gorilla accepted permessage-deflate on
// ws: then it has a compressor to hand its writers. Not knowing is no:
// the client is then sent plain frames, which it takes either way.
func negotiatedDeflate(ws *websocket.Conn) bool {
	if fieldCompressor == nil {
		return false
	}
	return !reflect.ValueOf(ws).Elem().FieldByIndex(fieldCompressor).IsNil()
}

// messageDone reports whether gorilla has read the whole of the message
// being read: it drops its message reader at the message's end. Not
// knowing is yes, as before compression could stop a read short.
func messageDone(ws *websocket.Conn) bool {
	if fieldMessageReader == nil {
		return true
	}
	return reflect.ValueOf(ws).Elem().FieldByIndex(fieldMessageReader).IsNil()
}
