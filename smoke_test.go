package chatroom

import "testing"

func TestSmokeChat(t *testing.T) {
	p := startCaddy(t, "\tchatroom /ws\n\troot * {{root}}\n\tfile_server")
	a := dial(t, p.url("ws", "/ws"), nil)
	aid, _ := a.login()
	b := dial(t, p.url("ws", "/ws"), nil)
	bid, online := b.login()
	t.Logf("a=%s b=%s online=%v", aid, bid, online)
	j := a.next()
	t.Logf("a got %v", j)
	a.send(map[string]any{"msg": "hello"})
	f := b.next()
	t.Logf("b got %v", f)
	if f.str("msg") != "hello" || f.str("from_id") != aid {
		t.Fatalf("bad %v", f)
	}
}
