package chat

import (
	"errors"
	"strings"
	"testing"
)

func TestCleanNameAccepts(t *testing.T) {
	for in, want := range map[string]string{
		"alice":                 "alice",
		"  bob  ":               "bob",
		"Zoë":                   "Zoë",
		"Zoe\u0308":             "Zoë", // NFC
		"李小龙":                   "李小龙",
		"a b":                   "a b",
		strings.Repeat("x", 32): strings.Repeat("x", 32),
		strings.Repeat("é", 32): strings.Repeat("é", 32),
		"\u00a0carol\u00a0":     "carol",
		"emoji \U0001F600":      "emoji \U0001F600",
	} {
		got, err := CleanName(in)
		if err != nil || got != want {
			t.Errorf("CleanName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestCleanNameRefuses(t *testing.T) {
	for in, want := range map[string]error{
		"":                      ErrNameEmpty,
		"   ":                   ErrNameEmpty,
		strings.Repeat("x", 33): ErrNameTooLong,
		"evil\u202Eexe.txt":     ErrNameForbidden, // right-to-left override
		"\u200B\u200B":          ErrNameForbidden, // zero-width spaces (Cf)
		"a\u2028b":              ErrNameForbidden, // line separator
		"a\u2029b":              ErrNameForbidden, // paragraph separator
		"bell\a":                ErrNameForbidden,
		"nul\x00":               ErrNameForbidden,
		"tab\there":             ErrNameForbidden,
		"\u0301\u0301":          ErrNameInvisible, // combining marks only
		"\u3164":                ErrNameInvisible, // Hangul filler
		"bad\xffutf8":           ErrNameForbidden,
		"soft\u00ADhyphen":      ErrNameForbidden, // Cf
		"\uFEFFbom":             ErrNameForbidden,
	} {
		got, err := CleanName(in)
		if !errors.Is(err, want) {
			t.Errorf("CleanName(%q) = %q, %v; want %v", in, got, err, want)
		}
	}
}

func TestCleanUser(t *testing.T) {
	for in, want := range map[string]string{
		"  carol\a ":            "carol",
		strings.Repeat("é", 80): strings.Repeat("é", 32),
		"\u202Eadmin":           "admin",
		"\u200B":                "",
		"":                      "",
		"a\u2028b":              "ab",
	} {
		if got := CleanUser(in); got != want {
			t.Errorf("CleanUser(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"alice", "\u202E", "Zoe\u0308", strings.Repeat("x", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := CleanName(s)
		if err != nil {
			return
		}
		if again, err := CleanName(got); err != nil || again != got {
			t.Fatalf("CleanName(%q) = %q is not stable: %q, %v", s, got, again, err)
		}
		if u := CleanUser(s); u != got {
			t.Fatalf("CleanUser(%q) = %q, but CleanName accepts it as %q", s, u, got)
		}
	})
}

func TestValidRoom(t *testing.T) {
	for _, ok := range []string{"lobby", "a", "A.b_c-9", strings.Repeat("r", 64)} {
		if !ValidRoom(ok) {
			t.Errorf("ValidRoom(%q) = false, want true", ok)
		}
	}
	for _, bad := range []string{"", strings.Repeat("r", 65), "has space", "slash/", "émoji", "semi;colon", "nul\x00"} {
		if ValidRoom(bad) {
			t.Errorf("ValidRoom(%q) = true, want false", bad)
		}
	}
}
