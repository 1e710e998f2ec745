package chatroom

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden Caddyfile adapt files in testdata/adapt")

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  Handler
	}{
		{"bare", `chatroom`, Handler{}},
		{"empty block", "chatroom {\n}", Handler{}},
		{"memcached one", "chatroom {\n memcached 127.0.0.1:11211\n}", Handler{Memcached: []string{"127.0.0.1:11211"}}},
		{"memcached many", "chatroom {\n memcached a:1 b:2\n memcached [::1]:11211\n}", Handler{Memcached: []string{"a:1", "b:2", "[::1]:11211"}}},
		{"prefix", "chatroom {\n prefix site1:\n}", Handler{Prefix: "site1:"}},
		{"room", "chatroom {\n room {http.request.uri.query.room}\n}", Handler{Room: "{http.request.uri.query.room}"}},
		{"user", "chatroom {\n user {http.auth.user.id}\n}", Handler{User: "{http.auth.user.id}"}},
		{"origins", "chatroom {\n origins https://a.example http://b.example:8080\n}", Handler{Origins: []string{"https://a.example", "http://b.example:8080"}}},
		{"origins any", "chatroom {\n origins *\n}", Handler{Origins: []string{"*"}}},
		{"history", "chatroom {\n history 50\n}", Handler{History: 50}},
		{"max_message_size KiB", "chatroom {\n max_message_size 16KiB\n}", Handler{MaxMessageSize: 16 << 10}},
		{"max_message_size bytes", "chatroom {\n max_message_size 512\n}", Handler{MaxMessageSize: 512}},
		{"rate_limit", "chatroom {\n rate_limit 5 2s\n}", Handler{RateLimit: &RateLimit{Messages: 5, Interval: caddy.Duration(2 * time.Second)}}},
		{"send_queue", "chatroom {\n send_queue 64\n}", Handler{SendQueue: 64}},
		{"max_connections", "chatroom {\n max_connections 1000\n}", Handler{MaxConnections: 1000}},
		{"ping_interval", "chatroom {\n ping_interval 10s\n}", Handler{PingInterval: caddy.Duration(10 * time.Second)}},
		{"ttl", "chatroom {\n ttl 1m\n}", Handler{TTL: caddy.Duration(time.Minute)}},
		{"ttl days", "chatroom {\n ttl 1d\n}", Handler{TTL: caddy.Duration(24 * time.Hour)}},
		{"resume_window", "chatroom {\n resume_window 5m\n}", Handler{ResumeWindow: caddy.Duration(5 * time.Minute)}},
		{"presence_limit", "chatroom {\n presence_limit 20\n}", Handler{PresenceLimit: 20}},
		{"max_rooms", "chatroom {\n max_rooms 50\n}", Handler{MaxRooms: intPtr(50)}},
		{"max_rooms no limit", "chatroom {\n max_rooms 0\n}", Handler{MaxRooms: intPtr(0)}},
		{"compression", "chatroom {\n compression\n}", Handler{Compression: &Compression{MinSize: DefaultCompressionMinSize}}},
		{"compression min_size", "chatroom {\n compression 1KiB\n}", Handler{Compression: &Compression{MinSize: 1024}}},
		{"compression bytes", "chatroom {\n compression 64\n}", Handler{Compression: &Compression{MinSize: 64}}},
		{"remote_presence", "chatroom {\n remote_presence 2000 500\n}", Handler{RemotePresence: &RemotePresence{Rooms: 2000, Members: 500}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Handler
			if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input)); err != nil {
				t.Fatalf("UnmarshalCaddyfile(%q): %v", tt.input, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("UnmarshalCaddyfile(%q) = %+v, want %+v", tt.input, got, tt.want)
			}
		})
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		wantErr string // a part of the message
	}{
		{"unknown subdirective", "chatroom {\n bogus 1\n}", `unrecognized chatroom subdirective "bogus"`},
		{"inline argument", "chatroom lobby", "takes no arguments"},
		{"memcached empty", "chatroom {\n memcached\n}", "memcached: want at least one host:port"},
		{"memcached no port", "chatroom {\n memcached localhost\n}", "want host:port"},
		{"memcached bad port", "chatroom {\n memcached localhost:http\n}", "bad port"},
		{"memcached port range", "chatroom {\n memcached localhost:70000\n}", "bad port"},
		{"prefix missing", "chatroom {\n prefix\n}", "prefix: want exactly one argument"},
		{"prefix too many", "chatroom {\n prefix a b\n}", "prefix: want exactly one argument, got 2"},
		{"room missing", "chatroom {\n room\n}", "room: want exactly one argument"},
		{"user missing", "chatroom {\n user\n}", "user: want exactly one argument"},
		{"origins empty", "chatroom {\n origins\n}", "origins: want at least one origin"},
		{"origin with path", "chatroom {\n origins https://a.example/chat\n}", "want scheme://host[:port]"},
		{"origin without scheme", "chatroom {\n origins a.example\n}", "want scheme://host[:port]"},
		{"origin ftp", "chatroom {\n origins ftp://a.example\n}", "want scheme://host[:port]"},
		{"history not a number", "chatroom {\n history lots\n}", `history: bad number "lots"`},
		{"remote_presence one number", "chatroom {\n remote_presence 10\n}", "remote_presence takes <rooms> <members>"},
		{"remote_presence over the maximum", "chatroom {\n remote_presence 100001 10\n}", "remote_presence: bad numbers"},
		{"remote_presence zero", "chatroom {\n remote_presence 10 0\n}", "remote_presence: bad numbers"},
		{"history negative", "chatroom {\n history -1\n}", `history: bad number "-1"`},
		{"history too large", "chatroom {\n history 1001\n}", "from 0 to 1000"},
		{"max_message_size bad", "chatroom {\n max_message_size huge\n}", `max_message_size: bad size "huge"`},
		{"max_message_size zero", "chatroom {\n max_message_size 0\n}", `max_message_size: bad size "0"`},
		{"rate_limit one arg", "chatroom {\n rate_limit 5\n}", "rate_limit: want <messages> <interval>"},
		{"rate_limit bad count", "chatroom {\n rate_limit many 1s\n}", `rate_limit: bad message count "many"`},
		{"rate_limit zero count", "chatroom {\n rate_limit 0 1s\n}", `rate_limit: bad message count "0"`},
		{"rate_limit bad interval", "chatroom {\n rate_limit 5 soon\n}", `rate_limit: bad interval "soon"`},
		{"send_queue zero", "chatroom {\n send_queue 0\n}", `send_queue: bad number "0"`},
		{"max_connections negative", "chatroom {\n max_connections -5\n}", `max_connections: bad number "-5"`},
		{"ping_interval bad", "chatroom {\n ping_interval often\n}", `ping_interval: bad duration "often"`},
		{"ping_interval negative", "chatroom {\n ping_interval -1s\n}", `ping_interval: bad duration "-1s"`},
		{"ttl bad", "chatroom {\n ttl forever\n}", `ttl: bad duration "forever"`},
		{"ttl missing", "chatroom {\n ttl\n}", "ttl: want exactly one argument, got 0"},
		{"resume_window bad", "chatroom {\n resume_window later\n}", `resume_window: bad duration "later"`},
		{"resume_window zero", "chatroom {\n resume_window 0s\n}", `resume_window: bad duration "0s"`},
		{"resume_window missing", "chatroom {\n resume_window\n}", "resume_window: want exactly one argument, got 0"},
		{"presence_limit zero", "chatroom {\n presence_limit 0\n}", `presence_limit: bad number "0"`},
		{"presence_limit too large", "chatroom {\n presence_limit 10001\n}", "from 1 to 10000"},
		{"max_rooms negative", "chatroom {\n max_rooms -1\n}", `max_rooms: bad number "-1"`},
		{"max_rooms missing", "chatroom {\n max_rooms\n}", "max_rooms: want exactly one argument, got 0"},
		{"compression bad size", "chatroom {\n compression small\n}", `compression: bad minimum size "small"`},
		{"compression zero", "chatroom {\n compression 0\n}", `compression: bad minimum size "0"`},
		{"compression too large", "chatroom {\n compression 2GiB\n}", `compression: bad minimum size "2GiB"`},
		{"compression two args", "chatroom {\n compression 128 256\n}", "compression: want at most one argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if err == nil {
				t.Fatalf("UnmarshalCaddyfile(%q) = nil error, want one containing %q", tt.input, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("UnmarshalCaddyfile(%q) error = %q, want it to contain %q", tt.input, err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), "Testfile:") {
				t.Errorf("error %q does not name the file and line", err)
			}
		})
	}
}

// TestAdaptErrorNamesLine checks that a mistake in a real Caddyfile fails
// the adapter with the file's line, as `caddy adapt` shows it.
func TestAdaptErrorNamesLine(t *testing.T) {
	input := "http://localhost:8080 {\n\tchatroom /ws {\n\t\thistory 10\n\t\tsend_queue lots\n\t}\n}\n"
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": "Caddyfile"})
	if err == nil {
		t.Fatal("adapting a Caddyfile with `send_queue lots` succeeded")
	}
	if !strings.Contains(err.Error(), "Caddyfile:4") || !strings.Contains(err.Error(), `send_queue: bad number "lots"`) {
		t.Errorf("adapt error = %q, want it to name Caddyfile:4 and the bad value", err)
	}
	input = "http://localhost:8080 {\n\tchatroom /ws {\n\t\tcompression tiny\n\t}\n}\n"
	_, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": "Caddyfile"})
	if err == nil || !strings.Contains(err.Error(), "Caddyfile:3") || !strings.Contains(err.Error(), `compression: bad minimum size "tiny"`) {
		t.Errorf("adapting `compression tiny`: error %v, want it to name Caddyfile:3 and the bad value", err)
	}
}

func TestValidateJSONConfig(t *testing.T) {
	tests := []struct {
		name string
		h    Handler
		want string
	}{
		{"bad memcached", Handler{Memcached: []string{"nope"}}, "want host:port"},
		{"bad origin", Handler{Origins: []string{"a.example"}}, "want scheme://host[:port]"},
		{"bad prefix", Handler{Prefix: "has space"}, "printable characters without spaces"},
		{"history", Handler{History: 5000}, "history must be between"},
		{"send queue", Handler{SendQueue: -1}, "send_queue"},
		{"max connections", Handler{MaxConnections: -1}, "max_connections"},
		{"resume window negative", Handler{ResumeWindow: -1}, "resume_window"},
		{"resume window too long", Handler{ResumeWindow: caddy.Duration(25 * time.Hour)}, "resume_window must be positive and at most 24h"},
		{"presence limit", Handler{PresenceLimit: -3}, "presence_limit"},
		{"max rooms", Handler{MaxRooms: intPtr(-1)}, "max_rooms"},
		{"compression min_size", Handler{Compression: &Compression{MinSize: -1}}, "compression min_size"},
		{"remote presence", Handler{RemotePresence: &RemotePresence{Rooms: 0, Members: 10}}, "remote_presence wants"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.h.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if err := (&Handler{}).Validate(); err != nil {
		t.Errorf("Validate() of the zero config = %v, want nil", err)
	}
}

// TestCaddyfileAdapt compares the JSON that Caddyfiles in testdata/adapt
// adapt to with the golden JSON below the "----------" line of each file.
// Run with -update to rewrite them after a deliberate change.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/adapt/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files in testdata/adapt: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, golden, ok := strings.Cut(string(data), "----------\n")
			if !ok && !*updateGolden {
				t.Fatalf("%s has no ---------- line between Caddyfile and JSON", file)
			}
			if *updateGolden {
				out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
				if err != nil {
					t.Fatal(err)
				}
				var pretty strings.Builder
				if err := indentJSON(&pretty, out); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, []byte(input+"----------\n"+pretty.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			caddytest.AssertAdapt(t, input, "caddyfile", strings.TrimRight(golden, "\n"))
		})
	}
}

func indentJSON(w *strings.Builder, data []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, data, "", "\t"); err != nil {
		return err
	}
	w.Write(buf.Bytes())
	w.WriteString("\n")
	return nil
}

// intPtr returns a pointer to n, for settings where 0 differs from unset.
func intPtr(n int) *int { return &n }
