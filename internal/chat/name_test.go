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

func TestVerifyUser(t *testing.T) {
	for _, ok := range []string{"alice", "Zoë", strings.Repeat("é", 32), "a b", "bob@example.com"} {
		if got, err := VerifyUser(ok); err != nil || got != ok {
			t.Errorf("VerifyUser(%q) = %q, %v, want it unchanged", ok, got, err)
		}
	}
	if got, err := VerifyUser(""); got != "" || err != nil {
		t.Errorf("VerifyUser(\"\") = %q, %v, want no user and no error", got, err)
	}
	long := strings.Repeat("u", 32)
	for _, bad := range []string{
		"alice\u200B", "ad\u00ADmin", "root\u202E", "  carol ", "carol\a",
		long + "-one", long + "-two", strings.Repeat("é", 33),
		"Zoe\u0308", // NFC makes it Zoë: another string than given
		"\u200B", " ", "a\u2028b", "\xff",
	} {
		if got, err := VerifyUser(bad); err == nil {
			t.Errorf("VerifyUser(%q) = %q, want an error", bad, got)
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
		if u, err := VerifyUser(s); (err == nil) != (got == s) || err == nil && u != s {
			t.Fatalf("VerifyUser(%q) = %q, %v, but CleanName makes it %q", s, u, err, got)
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
