package wsio

import (
	"bufio"
	"reflect"

	"github.com/gorilla/websocket"
)

// readerOf returns gorilla's read buffer of ws when it is br, the one the
// hijacker made: the reader must see what gorilla has buffered before it
// may park, so parking is only on when it is. gorilla does not export its
// reader; this is the one place that looks inside it. If a gorilla upgrade
// renames or retypes the field, readerOf returns nil (no parking) and
// TestParkingAssumption fails.
func readerOf(ws *websocket.Conn, br *bufio.Reader) *bufio.Reader {
	if br == nil {
		return nil
	}
	f := reflect.ValueOf(ws).Elem().FieldByName("br")
	if !f.IsValid() || f.Kind() != reflect.Pointer || f.Pointer() != reflect.ValueOf(br).Pointer() {
		return nil
	}
	return br
}
