package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestOptionErrorText(t *testing.T) {
	t.Parallel()
	rule := errors.New("broken")
	for _, tc := range []struct {
		name      string
		err       *OptionError
		component string
		want      string
	}{
		{"no value", &OptionError{Option: "URL", Rule: "required"}, "worker", "worker: option URL: required"},
		{"value", &OptionError{Option: "MaxJobs", Value: "-1", Rule: "must be >= 0"}, "worker", `worker: option MaxJobs = "-1": must be >= 0`},
		{"invisible character escaped", &OptionError{Option: "Deployment", Value: "a\u00a0", Rule: "r"}, "guard", `guard: option Deployment = "a\u00a0": r`},
		{"from the environment", &OptionError{Option: "Deployment", Value: "prod", Rule: "r", Env: "LIVEKIT_AGENT_DEPLOYMENT"}, "worker", `worker: LIVEKIT_AGENT_DEPLOYMENT="prod" (for option Deployment): r`},
		{"unattributed", &OptionError{Option: "URL", Rule: "required", Err: rule}, "", "option URL: required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Attribute(fmt.Errorf("wrapped: %w", tc.err), tc.component)
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("Error() = %q, want %q", got, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "wrapped: ") {
				t.Errorf("Attribute changed the wrapping error: %v", err)
			}
		})
	}
	oe := &OptionError{Option: "URL", Rule: "r", Err: rule}
	if !errors.Is(oe, rule) {
		t.Error("errors.Is(OptionError, its Err) = false")
	}
	Attribute(Attribute(oe, "worker"), "guard")
	if !strings.HasPrefix(oe.Error(), "worker: ") {
		t.Errorf("a second Attribute replaced the first: %v", oe)
	}
	if Attribute(nil, "worker") != nil {
		t.Error("Attribute(nil) != nil")
	}
}

func TestConn(t *testing.T) {
	t.Parallel()
	env := map[string]string{EnvURL: "ws://env:7880", EnvAPIKey: "envkey", EnvAPISecret: "envsecret"}
	for _, tc := range []struct {
		name                string
		url, key, secret    string
		getenv              func(string) string
		wantOption, wantURL string
		wantSecret          string
	}{
		{name: "all from the environment", getenv: func(k string) string { return env[k] }, wantURL: "ws://env:7880", wantSecret: "envsecret"},
		{name: "options win", url: "wss://opt", key: "k", secret: "s", getenv: func(k string) string { return env[k] }, wantURL: "wss://opt", wantSecret: "s"},
		{name: "no URL", key: "k", secret: "s", getenv: func(string) string { return "" }, wantOption: "URL"},
		{name: "bad URL", url: "ftp://h", key: "k", secret: "s", getenv: func(string) string { return "" }, wantOption: "URL", wantURL: "ftp://h"},
		{name: "no key", url: "ws://h", secret: "s", getenv: func(string) string { return "" }, wantOption: "APIKey", wantURL: "ws://h"},
		{name: "no secret", url: "ws://h", key: "k", getenv: func(string) string { return "" }, wantOption: "APISecret", wantURL: "ws://h"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, key, secret := tc.url, tc.key, tc.secret
			FromEnv(&url, &key, &secret, tc.getenv)
			if tc.wantURL != "" && url != tc.wantURL {
				t.Errorf("URL = %q, want %q", url, tc.wantURL)
			}
			if tc.wantSecret != "" && secret != tc.wantSecret {
				t.Errorf("secret = %q, want %q", secret, tc.wantSecret)
			}
			err := CheckConn(url, key, secret)
			var oe *OptionError
			switch {
			case tc.wantOption == "" && err != nil:
				t.Errorf("CheckConn = %v, want nil", err)
			case tc.wantOption != "" && (!errors.As(err, &oe) || oe.Option != tc.wantOption):
				t.Errorf("CheckConn = %v, want an *OptionError for %s", err, tc.wantOption)
			}
		})
	}
}
