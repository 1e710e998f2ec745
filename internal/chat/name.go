package chat

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// MaxNameRunes is the longest name, chosen or authenticated, in characters.
const MaxNameRunes = 32

// Reasons a name is refused; a client is told them in a bad_nick error frame.
var (
	ErrNameEmpty     = errors.New("nick must not be empty")
	ErrNameTooLong   = fmt.Errorf("nick must be at most %d characters", MaxNameRunes)
	ErrNameInvisible = errors.New("nick must contain at least one visible character")
	ErrNameForbidden = errors.New("nick must not contain control, format, line or paragraph separator characters")
)

// CleanName returns the name a person sees for s, or the reason it is
// refused: NFC-normalised and trimmed, 1 to MaxNameRunes characters, none of
// them a control (Cc), format (Cf: bidirectional overrides, zero-width
// characters), line (Zl) or paragraph (Zp) separator, and at least one of
// them visible. Names from every source pass this rule: chosen nicks,
// authenticated `user` names (VerifyUser: unchanged by it, or refused) and
// names read back from a cluster relay.
func CleanName(s string) (string, error) {
	if !utf8.ValidString(s) {
		return "", ErrNameForbidden
	}
	s = strings.TrimSpace(norm.NFC.String(s))
	n := utf8.RuneCountInString(s)
	bad := strings.IndexFunc(s, forbiddenInName)
	switch {
	case n == 0:
		return "", ErrNameEmpty
	case n > MaxNameRunes:
		return "", ErrNameTooLong
	case bad >= 0:
		r, _ := utf8.DecodeRuneInString(s[bad:])
		return "", fmt.Errorf("%w (found U+%04X)", ErrNameForbidden, r)
	case strings.IndexFunc(s, visible) < 0:
		return "", ErrNameInvisible
	}
	return s, nil
}

// ErrUserChanged is the reason a `user` name is refused: the name rules
// would show it as another string.
var ErrUserChanged = errors.New("user name is not shown as given by the name rules (white space around it, or not NFC-normalised)")

// VerifyUser checks a resolved `user` template as an authenticated name.
// The name is taken exactly as given or not at all: one that CleanName
// refuses, or would change (trimming, normalisation), is an error, never a
// cleaned name, because two different user ids must never be shown as one
// verified name ("ad" U+00AD "min" is not "admin", and two ids sharing 32
// characters are not one person). An empty s is no user and no error.
func VerifyUser(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	name, err := CleanName(s)
	if err != nil {
		return "", err
	}
	if name != s {
		return "", ErrUserChanged
	}
	return name, nil
}

// forbiddenInName reports the characters no name may hold.
func forbiddenInName(r rune) bool {
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp)
}

// visible reports a character that leaves a mark: not white space and not a
// mark or filler that renders as nothing on its own.
func visible(r rune) bool {
	if unicode.IsSpace(r) || unicode.Is(unicode.Mn, r) || unicode.Is(unicode.Me, r) {
		return false
	}
	switch r {
	case '\u115F', '\u1160', '\u3164', '\uFFA0', '\u2800': // Hangul fillers, braille blank
		return false
	}
	return unicode.IsGraphic(r)
}
