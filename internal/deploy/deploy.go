// Package deploy holds the rules for deployment labels and agent names that
// the worker and the lkagent CLI share, so that a dispatch can never name a
// deployment a worker would refuse, and the traps a label can hide (a
// label named like production, invisible characters, look-alike letters)
// are caught in one place.
//
//	warning, err := deploy.CheckDeployment(d)
//	if err != nil {
//		return &deploy.Error{Source: "LIVEKIT_AGENT_DEPLOYMENT", Value: d, Err: err}
//	}
package deploy

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/livekit/protocol/agent"
)

// ProductionLabel names production (the empty deployment) where a label
// must not be empty: metric labels, status pages. The LiveKit server
// refuses '_' in a deployment, so no real deployment can be named so.
const ProductionLabel = "_production"

// Label is d for people and metrics: d itself, or [ProductionLabel] for "".
func Label(d string) string {
	if d == "" {
		return ProductionLabel
	}
	return d
}

// ErrNamedLikeProduction: a deployment named like production ("production",
// "prod", "default", …). Production is the empty deployment: a worker
// registered under such a name never gets production's dispatches, and a
// dispatch to it never reaches production's workers.
var ErrNamedLikeProduction = errors.New(`names production, but production is the empty deployment "": ` +
	`leave the deployment empty (unset the variable, or omit the option or flag) to serve or dispatch to production`)

// productionNames are the names (case folded, quotes and brackets trimmed)
// refused as deployments.
var productionNames = map[string]bool{"production": true, "prod": true, "prd": true, "default": true, "": true}

// rules is how the accepted labels look, for error messages.
const rules = "a deployment is at most 64 bytes of UTF-8 without '_', spaces, control or invisible characters; \"\" is production"

// CheckDeployment checks a deployment label. It returns an error for a
// label the LiveKit server refuses (agent.ValidateDeployment), one with
// invisible or space-like characters (valid for the server, but never
// typed the same way twice), and one named like production
// ([ErrNamedLikeProduction]). A label that is accepted but has letters
// outside ASCII (a Cyrillic 'а' in "stаging" looks like the Latin one)
// gets a warning: the text to show to whoever set it, else "".
func CheckDeployment(d string) (warning string, err error) {
	if d == "" {
		return "", nil
	}
	if err := agent.ValidateDeployment(d); err != nil {
		return "", fmt.Errorf("%w (%s)", err, rules)
	}
	if err := visibleText(d); err != nil {
		return "", fmt.Errorf("%w (%s)", err, rules)
	}
	if productionNames[strings.ToLower(strings.Trim(d, "\"'`()[]{}<>"))] {
		return "", ErrNamedLikeProduction
	}
	return lookAlikes(d), nil
}

// CheckAgentName checks an agent name ("" is the automatic agent): visible
// text (no control, format or space-like characters other than the
// ASCII space), no space at either end.
func CheckAgentName(n string) error {
	if err := visibleText(n); err != nil {
		return fmt.Errorf("%w (an agent name is the name dispatches address: visible characters only)", err)
	}
	if strings.TrimSpace(n) != n {
		return errors.New("has spaces at its start or end")
	}
	return nil
}

// Error reports a refused value and where it came from: an environment
// variable ("LIVEKIT_AGENT_DEPLOYMENT"), a flag ("--deployment") or an
// option ("option Deployment").
type Error struct {
	// Source names where the value came from.
	Source string
	// Value is the value as given; Error shows it quoted, invisible
	// characters escaped.
	Value string
	// Err is the rule the value breaks.
	Err error
}

func (e *Error) Error() string { return e.Source + "=" + Quote(e.Value) + ": " + e.Err.Error() }

// Unwrap returns the broken rule, for errors.Is(err, ErrNamedLikeProduction).
func (e *Error) Unwrap() error { return e.Err }

// Quote quotes s as Go does, with every character outside printable ASCII
// escaped too, so that no invisible or look-alike character hides in a
// message, and no control character reaches a terminal.
func Quote(s string) string { return strconv.QuoteToASCII(s) }

// Escape returns s for a table cell: s itself when it is printable and has
// no tab, else s quoted as [Quote] does. Control characters (a newline in an
// agent name) never reach the output raw.
func Escape(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return Quote(s)
		}
	}
	return s
}

// visibleText rejects invalid UTF-8 and characters that are invisible or
// look like a space (the ASCII space aside: the server refuses it in
// deployments, agent names may hold it inside).
func visibleText(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("is not valid UTF-8")
	}
	for i, r := range s {
		switch {
		case r == ' ':
		case unicode.Is(unicode.Zs, r) || unicode.Is(unicode.Zl, r) || unicode.Is(unicode.Zp, r):
			return fmt.Errorf("contains the space character U+%04X at byte %d", r, i)
		case unicode.Is(unicode.Cc, r) || unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Co, r) ||
			!unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S):
			return fmt.Errorf("contains the invisible or control character U+%04X at byte %d", r, i)
		}
	}
	return nil
}

// lookAlikes describes the letters of s outside ASCII, or returns "".
func lookAlikes(s string) string {
	scripts := map[string]bool{}
	var first string
	for i, r := range s {
		if r < utf8.RuneSelf || !unicode.IsLetter(r) {
			if unicode.IsLetter(r) {
				scripts["Latin"] = true
			}
			continue
		}
		name := script(r)
		scripts[name] = true
		if first == "" {
			first = fmt.Sprintf("U+%04X %q (%s) at byte %d", r, r, name, i)
		}
	}
	if first == "" {
		return ""
	}
	msg := "has letters outside ASCII, starting with " + first + ": it may look like another deployment's name but never matches it"
	if len(scripts) > 1 {
		names := make([]string, 0, len(scripts))
		for n := range scripts {
			names = append(names, n)
		}
		slices.Sort(names)
		msg = "mixes scripts (" + strings.Join(names, ", ") + "); " + msg
	}
	return msg
}

// script names the Unicode script of r, or "other".
func script(r rune) string {
	for _, name := range []string{"Latin", "Cyrillic", "Greek", "Armenian", "Cherokee", "Coptic"} {
		if unicode.Is(unicode.Scripts[name], r) {
			return name
		}
	}
	for name, table := range unicode.Scripts {
		if unicode.Is(table, r) {
			return name
		}
	}
	return "other"
}
