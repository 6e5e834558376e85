package restart

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/lkagent/lkagent/internal/config"
	"github.com/lkagent/lkagent/internal/lkurl"

	"github.com/prometheus/client_golang/prometheus"
)

// Environment variables read for options left empty.
const (
	EnvURL       = config.EnvURL
	EnvAPIKey    = config.EnvAPIKey
	EnvAPISecret = config.EnvAPISecret
)

// Defaults of [Options]. Every zero field takes the default named here.
const (
	// DefaultMaxRestarts restarts of one (room, agent, deployment) are
	// allowed per DefaultWindow; the next failure is refused.
	DefaultMaxRestarts = 3
	DefaultWindow      = 10 * time.Minute
	// DefaultBackoff is the least time between the first and the second
	// restart of one key; it doubles for every further restart, up to
	// DefaultMaxBackoff. The first restart is not delayed.
	DefaultBackoff    = time.Second
	DefaultMaxBackoff = time.Minute
	// DefaultAPITimeout bounds each call to the server's API.
	DefaultAPITimeout = 10 * time.Second
)

// Options configure a [Restarter]. Only the connection settings are needed,
// and they may come from the environment.
type Options struct {
	// URL of the LiveKit server: ws, wss, http or https. Default $LIVEKIT_URL.
	URL string
	// APIKey and APISecret authorize the calls to the server's room and
	// dispatch APIs (and, in [Webhook], verify the server's signatures).
	// Default $LIVEKIT_API_KEY and $LIVEKIT_API_SECRET. The secret is never
	// logged or printed.
	APIKey    string
	APISecret string

	// MaxRestarts is how many times one (room, agent name, deployment) may
	// be restarted within Window; a failure past that is refused
	// ("cap_reached"). Default 3; at least 1.
	MaxRestarts int
	// Window is the period MaxRestarts counts over, from the first restart
	// in it. Default 10m.
	Window time.Duration
	// Backoff is the least time between the first and the second restart of
	// one key; each further restart waits twice as long as the one before,
	// at most MaxBackoff. The first restart is immediate. Defaults 1s and 1m.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// APITimeout bounds each call to the server. Default 10s.
	APITimeout time.Duration

	// Logger receives one line per restart, refusal and error. Default
	// slog.Default().
	Logger *slog.Logger
	// Registerer receives the Prometheus collectors; nil = a registry of
	// the Restarter's own (see [Restarter.Gatherer]). The global registry
	// is never used unless passed here. Restarters sharing a Registerer
	// share their collectors.
	Registerer prometheus.Registerer
}

// OptionError reports an invalid option: which one, the rule, and the value
// (never a secret's value; quoted, with invisible characters escaped). It is
// the worker's type too.
type OptionError = config.OptionError

// withDefaults fills zero fields from getenv and the defaults, and
// validates the result.
func (o Options) withDefaults(getenv func(string) string) (Options, error) {
	config.FromEnv(&o.URL, &o.APIKey, &o.APISecret, getenv)
	if o.MaxRestarts == 0 {
		o.MaxRestarts = DefaultMaxRestarts
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&o.Window, DefaultWindow)
	setDur(&o.Backoff, DefaultBackoff)
	setDur(&o.MaxBackoff, DefaultMaxBackoff)
	setDur(&o.APITimeout, DefaultAPITimeout)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, config.Attribute(o.validate(), "guard")
}

func (o *Options) validate() error {
	if err := config.CheckConn(o.URL, o.APIKey, o.APISecret); err != nil {
		return err
	}
	if o.MaxRestarts < 1 {
		return &OptionError{Option: "MaxRestarts", Value: fmt.Sprint(o.MaxRestarts), Rule: "must be at least 1 (0 = the default, 3)"}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Window", o.Window}, {"Backoff", o.Backoff}, {"MaxBackoff", o.MaxBackoff}, {"APITimeout", o.APITimeout}} {
		if d.v < 0 {
			return &OptionError{Option: d.name, Value: d.v.String(), Rule: "must not be negative (0 = the default)"}
		}
	}
	if o.Backoff > o.MaxBackoff {
		return &OptionError{Option: "Backoff", Value: o.Backoff.String(), Rule: "must not exceed MaxBackoff (" + o.MaxBackoff.String() + ")"}
	}
	return nil
}

// httpURL is the server's HTTP base URL: ws becomes http, wss https.
func httpURL(base string) string { return lkurl.HTTP(base) }

func osGetenv(k string) string { return os.Getenv(k) }
