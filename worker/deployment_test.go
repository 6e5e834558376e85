package worker

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/lkagent/lkagent/internal/deploy"
)

// The deployment traps: each is refused or warned about, and the message
// names where the value came from.
func TestDeploymentTraps(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		option     string // Options.Deployment
		env        string // LIVEKIT_AGENT_DEPLOYMENT
		err        []string
		production bool
		warn       []string
	}{
		{name: "production from the environment", env: "production", production: true,
			err: []string{`worker: LIVEKIT_AGENT_DEPLOYMENT="production" (for option Deployment): `, `production is the empty deployment ""`}},
		{name: "Production as an option", option: "Production", production: true,
			err: []string{`worker: option Deployment = "Production": `}},
		{name: "prod", env: "prod", production: true},
		{name: "default", option: "default", production: true},
		{name: "a pair of quotes from a manifest", env: `""`, production: true},
		{name: "trailing space from the environment", env: "staging ",
			err: []string{`worker: LIVEKIT_AGENT_DEPLOYMENT="staging " (for option Deployment): `, "whitespace"}},
		{name: "no-break space as an option", option: "staging\u00a0",
			err: []string{`option Deployment = "staging\u00a0"`, "U+00A0"}},
		{name: "Cyrillic look-alike from the environment", env: "st\u0430ging",
			warn: []string{"mixes scripts", "Cyrillic", "U+0430", "source=LIVEKIT_AGENT_DEPLOYMENT", `st\\u0430ging`}},
		{name: "accented option", option: "préprod", warn: []string{"outside ASCII", `source="option Deployment"`}},
		{name: "plain staging", env: "staging"},
		{name: "production", option: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			o := validOptions()
			o.Deployment = tc.option
			o.Logger = slog.New(slog.NewTextHandler(&log, nil))
			getenv := func(k string) string {
				if k == EnvDeployment {
					return tc.env
				}
				return ""
			}
			_, err := newWorker(o, noop, getenv)
			if tc.production || len(tc.err) > 0 {
				var oe *OptionError
				if !errors.As(err, &oe) || oe.Option != "Deployment" {
					t.Fatalf("error %v, want an *OptionError for Deployment", err)
				}
				if tc.production != errors.Is(err, deploy.ErrNamedLikeProduction) {
					t.Errorf("error %v: named like production = %v, want %v", err, !tc.production, tc.production)
				}
				for _, part := range tc.err {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("error %q lacks %q", err, part)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("newWorker: %v", err)
			}
			for _, part := range tc.warn {
				if !strings.Contains(log.String(), part) {
					t.Errorf("log lacks %q:\n%s", part, log.String())
				}
			}
			if len(tc.warn) == 0 && strings.Contains(log.String(), "level=WARN") {
				t.Errorf("warning for a plain deployment:\n%s", log.String())
			}
		})
	}
}
