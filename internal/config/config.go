// Package config is the option plumbing that package worker and package
// guard (through internal/restart) share: the environment variables that
// name a LiveKit server and its API credentials, reading and checking them,
// and [OptionError], the error of an invalid option, which never shows a
// secret.
package config

import (
	"errors"
	"fmt"

	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/internal/lkurl"
)

// Environment variables read for connection options left empty.
const (
	EnvURL       = "LIVEKIT_URL"
	EnvAPIKey    = "LIVEKIT_API_KEY"
	EnvAPISecret = "LIVEKIT_API_SECRET"
)

// OptionError reports an invalid option: which one, the rule, and the value
// (never a secret's value; quoted, with invisible characters escaped).
type OptionError struct {
	Option string
	Value  string
	Rule   string
	// Env is the environment variable the value was read from, when the
	// option was left empty ("" when the option was set).
	Env string
	// Err is the broken rule as an error, when there is one to test for
	// (errors.Is(err, deploy.ErrNamedLikeProduction)); Unwrap returns it.
	Err error

	component string // the package whose option it is; begins the message
}

// Unwrap returns e.Err.
func (e *OptionError) Unwrap() error { return e.Err }

func (e *OptionError) Error() string {
	prefix := ""
	if e.component != "" {
		prefix = e.component + ": "
	}
	switch {
	case e.Env != "":
		return fmt.Sprintf("%s%s=%s (for option %s): %s", prefix, e.Env, deploy.Quote(e.Value), e.Option, e.Rule)
	case e.Value == "":
		return fmt.Sprintf("%soption %s: %s", prefix, e.Option, e.Rule)
	}
	return fmt.Sprintf("%soption %s = %s: %s", prefix, e.Option, deploy.Quote(e.Value), e.Rule)
}

// Attribute names component ("worker", "guard") as the package whose
// option the *OptionError in err's chain is, so that its message begins
// with it; an error without one, or one already attributed, is left alone.
// It returns err.
func Attribute(err error, component string) error {
	var oe *OptionError
	if errors.As(err, &oe) && oe.component == "" {
		oe.component = component
	}
	return err
}

// FromEnv sets each of url, key and secret that is empty from its
// environment variable, as getenv reads it.
func FromEnv(url, key, secret *string, getenv func(string) string) {
	for _, f := range []struct {
		v   *string
		env string
	}{{url, EnvURL}, {key, EnvAPIKey}, {secret, EnvAPISecret}} {
		if *f.v == "" {
			*f.v = getenv(f.env)
		}
	}
}

// CheckConn checks a server URL and API credentials, and returns an
// *OptionError for the first that is missing or invalid (the URL shown
// without a password or query, the secret never).
func CheckConn(url, key, secret string) error {
	if url == "" {
		return &OptionError{Option: "URL", Rule: "required: set Options.URL or " + EnvURL + " (for example ws://127.0.0.1:7880)"}
	}
	if shown, problem := lkurl.Problem(url); problem != "" {
		return &OptionError{Option: "URL", Value: shown, Rule: problem}
	}
	if key == "" {
		return &OptionError{Option: "APIKey", Rule: "required: set Options.APIKey or " + EnvAPIKey}
	}
	if secret == "" {
		return &OptionError{Option: "APISecret", Rule: "required: set Options.APISecret or " + EnvAPISecret}
	}
	return nil
}
