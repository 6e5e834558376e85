package worker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
)

const optSecret = "opt-secret-do-not-print-41d7"

func noop(context.Context, *job.Job) error { return nil }

func noEnv(string) string { return "" }

func validOptions() Options {
	return Options{URL: "ws://127.0.0.1:7880", APIKey: "key", APISecret: optSecret, AgentName: "bot"}
}

func TestOptionErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		mod    func(*Options)
		option string
	}{
		{"missing URL", func(o *Options) { o.URL = "" }, "URL"},
		{"bad scheme", func(o *Options) { o.URL = "ftp://127.0.0.1:7880" }, "URL"},
		{"no scheme", func(o *Options) { o.URL = "127.0.0.1:7880" }, "URL"},
		{"no host", func(o *Options) { o.URL = "ws://" }, "URL"},
		{"unparsable URL", func(o *Options) { o.URL = "ws://[::1" }, "URL"},
		{"missing API key", func(o *Options) { o.APIKey = "" }, "APIKey"},
		{"no agent name without opting in to the automatic dispatch", func(o *Options) { o.AgentName = "" }, "AgentName"},
		{"automatic dispatch with an agent name", func(o *Options) { o.AutomaticDispatch = true }, "AutomaticDispatch"},
		{"missing API secret", func(o *Options) { o.APISecret = "" }, "APISecret"},
		{"65-byte deployment", func(o *Options) { o.Deployment = strings.Repeat("d", 65) }, "Deployment"},
		{"deployment with underscore", func(o *Options) { o.Deployment = "prod_us" }, "Deployment"},
		{"deployment with space", func(o *Options) { o.Deployment = "prod us" }, "Deployment"},
		{"deployment with tab", func(o *Options) { o.Deployment = "prod\tus" }, "Deployment"},
		{"deployment with control byte", func(o *Options) { o.Deployment = "prod\x00" }, "Deployment"},
		{"deployment of invalid UTF-8", func(o *Options) { o.Deployment = "stag\xffing" }, "Deployment"},
		{"deployment with a no-break space", func(o *Options) { o.Deployment = "staging\u00a0" }, "Deployment"},
		{"deployment with a zero-width space", func(o *Options) { o.Deployment = "stag\u200bing" }, "Deployment"},
		{"deployment with a byte order mark", func(o *Options) { o.Deployment = "\ufeffstaging" }, "Deployment"},
		{"deployment with an ideographic space", func(o *Options) { o.Deployment = "stag\u3000ing" }, "Deployment"},
		{"agent name of invalid UTF-8", func(o *Options) { o.AgentName = "bot\xfe" }, "AgentName"},
		{"agent name with a zero-width joiner", func(o *Options) { o.AgentName = "bo\u200dt" }, "AgentName"},
		{"agent name with a trailing space", func(o *Options) { o.AgentName = "bot " }, "AgentName"},
		{"agent name with a newline", func(o *Options) { o.AgentName = "bot\n" }, "AgentName"},
		{"URL with user and password", func(o *Options) { o.URL = "ws://user:" + optSecret + "@127.0.0.1:7880" }, "URL"},
		{"URL with a user", func(o *Options) { o.URL = "wss://user@lk.example.com" }, "URL"},
		{"URL with a query", func(o *Options) { o.URL = "wss://lk.example.com/?access_token=" + optSecret }, "URL"},
		{"host without a scheme", func(o *Options) { o.URL = "lk.example.com" }, "URL"},
		{"bad job type", func(o *Options) { o.JobType = livekit.JobType(99) }, "JobType"},
		{"negative MaxJobs", func(o *Options) { o.MaxJobs = -1 }, "MaxJobs"},
		{"LoadThreshold above 1", func(o *Options) { o.LoadThreshold = 1.01 }, "LoadThreshold"},
		{"negative LoadThreshold", func(o *Options) { o.LoadThreshold = -0.5 }, "LoadThreshold"},
		{"negative MaxRetry", func(o *Options) { o.MaxRetry = -1 }, "MaxRetry"},
		{"MinBackoff above MaxBackoff", func(o *Options) { o.MinBackoff, o.MaxBackoff = time.Second, time.Millisecond }, "MinBackoff"},
		{"negative PingInterval", func(o *Options) { o.PingInterval = -time.Second }, "PingInterval"},
		{"negative DrainTimeout", func(o *Options) { o.DrainTimeout = -time.Second }, "DrainTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := validOptions()
			tc.mod(&o)
			w, err := newWorker(o, noop, noEnv)
			if err == nil {
				t.Fatalf("newWorker accepted the options (worker %v)", w != nil)
			}
			var oe *OptionError
			if !errors.As(err, &oe) {
				t.Fatalf("error %v (%T) is not an *OptionError", err, err)
			}
			if oe.Option != tc.option {
				t.Errorf("OptionError.Option = %q, want %q (error: %v)", oe.Option, tc.option, err)
			}
			if !strings.Contains(err.Error(), tc.option) {
				t.Errorf("error %q does not name the option %s", err, tc.option)
			}
			if strings.Contains(err.Error(), optSecret) {
				t.Errorf("error %q contains the API secret", err)
			}
		})
	}
}

func TestOptionsBoundariesAccepted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		mod  func(*Options)
	}{
		{"64-byte deployment", func(o *Options) { o.Deployment = strings.Repeat("d", 64) }},
		{"production deployment", func(o *Options) { o.Deployment = "" }},
		{"dashed deployment", func(o *Options) { o.Deployment = "eu-west.canary-2" }},
		{"non-ASCII deployment", func(o *Options) { o.Deployment = "préprod" }},
		{"agent name with inner spaces", func(o *Options) { o.AgentName = "support bot" }},
		{"automatic agent, opted in", func(o *Options) { o.AgentName, o.AutomaticDispatch = "", true }},
		{"http URL", func(o *Options) { o.URL = "http://127.0.0.1:7880" }},
		{"wss URL with path", func(o *Options) { o.URL = "wss://lk.example.com/base" }},
		{"LoadThreshold 1", func(o *Options) { o.LoadThreshold = 1 }},
		{"publisher jobs", func(o *Options) { o.JobType = livekit.JobType_JT_PUBLISHER }},
		{"participant jobs", func(o *Options) { o.JobType = livekit.JobType_JT_PARTICIPANT }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := validOptions()
			tc.mod(&o)
			if _, err := newWorker(o, noop, noEnv); err != nil {
				t.Fatalf("newWorker: %v", err)
			}
		})
	}
}

func TestNilHandler(t *testing.T) {
	t.Parallel()
	_, err := newWorker(validOptions(), nil, noEnv)
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Option != "handler" {
		t.Fatalf("newWorker(nil handler) = %v, want an *OptionError for handler", err)
	}
}

func TestOptionsFromEnvironment(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		EnvURL:        "wss://lk.example.com",
		EnvAPIKey:     "env-key",
		EnvAPISecret:  optSecret,
		EnvDeployment: "staging",
	}
	getenv := func(k string) string { return env[k] }

	w, err := newWorker(Options{AgentName: "bot"}, noop, getenv)
	if err != nil {
		t.Fatalf("newWorker with everything from the environment: %v", err)
	}
	if w.o.URL != env[EnvURL] || w.o.APIKey != env[EnvAPIKey] || w.o.APISecret != env[EnvAPISecret] || w.o.Deployment != "staging" {
		t.Errorf("options from the environment: URL %q key %q secret set %v deployment %q",
			w.o.URL, w.o.APIKey, w.o.APISecret == optSecret, w.o.Deployment)
	}
	if w.o.LoadThreshold != DefaultLoadThreshold || w.o.PingInterval != DefaultPingInterval ||
		w.o.DrainTimeout != DefaultDrainTimeout || w.o.Version != "lkagent/"+Version {
		t.Errorf("defaults not applied: %+v", w.o)
	}

	// Fields set explicitly win over the environment.
	o := Options{URL: "ws://10.0.0.1:7880", APIKey: "k2", APISecret: "s2", Deployment: "canary", AgentName: "bot"}
	w, err = newWorker(o, noop, getenv)
	if err != nil {
		t.Fatalf("newWorker: %v", err)
	}
	if w.o.URL != o.URL || w.o.APIKey != "k2" || w.o.APISecret != "s2" || w.o.Deployment != "canary" {
		t.Errorf("explicit options overridden by the environment: URL %q key %q deployment %q", w.o.URL, w.o.APIKey, w.o.Deployment)
	}

	// A bad deployment from the environment is reported like a bad option.
	env[EnvDeployment] = "prod_us"
	_, err = newWorker(Options{AgentName: "bot"}, noop, getenv)
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Option != "Deployment" || strings.Contains(err.Error(), optSecret) {
		t.Errorf("bad %s: error %v, want an *OptionError for Deployment without the secret", EnvDeployment, err)
	}

	// A missing setting names the environment variable to set.
	_, err = newWorker(Options{AgentName: "bot"}, noop, func(k string) string {
		if k == EnvAPISecret {
			return ""
		}
		return getenv(k)
	})
	if !errors.As(err, &oe) || oe.Option != "APISecret" || !strings.Contains(err.Error(), EnvAPISecret) {
		t.Errorf("missing secret: error %v, want an *OptionError for APISecret naming %s", err, EnvAPISecret)
	}
}

// Errors for a URL say what to do, and never show a password or a query.
func TestURLErrorsSayWhatToDo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, want string }{
		{"lk.example.com:7880", "write ws://lk.example.com:7880"},
		{"ws://user:" + optSecret + "@127.0.0.1:7880", "remove the user@ part"},
		{"wss://lk.example.com/?token=" + optSecret, "base URL"},
		{"user:" + optSecret + "@lk.example.com", "write ws://lk.example.com"},
	} {
		o := validOptions()
		o.URL = tc.url
		_, err := newWorker(o, noop, noEnv)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("URL %q: error %v, want it to say %q", tc.url, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), optSecret) {
			t.Errorf("URL %q: error %q shows the secret", tc.url, err)
		}
	}
}

// Invisible characters in an invalid deployment are shown escaped.
func TestDeploymentErrorShowsInvisibleCharacters(t *testing.T) {
	t.Parallel()
	o := validOptions()
	o.Deployment = "staging\u200b"
	_, err := newWorker(o, noop, noEnv)
	if err == nil || !strings.Contains(err.Error(), `staging\u200b`) || !strings.Contains(err.Error(), "U+200B") {
		t.Fatalf("error %v, want the deployment shown escaped and the character named", err)
	}
}

func TestTopicTwin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		agent, deployment string
		want              registration
		ok                bool
	}{
		{"foo", "staging", registration{agentName: "foo_staging"}, true},
		{"foo_staging", "", registration{agentName: "foo", deployment: "staging"}, true},
		{"a_b_canary", "", registration{agentName: "a_b", deployment: "canary"}, true},
		{"foo", "", registration{}, false},
		{"foo_", "", registration{}, false},
		{"_foo", "", registration{}, false},
		{"", "staging", registration{}, false},
	} {
		got, ok := topicTwin(tc.agent, tc.deployment)
		if got != tc.want || ok != tc.ok {
			t.Errorf("topicTwin(%q, %q) = %+v %v, want %+v %v", tc.agent, tc.deployment, got, ok, tc.want, tc.ok)
		}
	}
}
