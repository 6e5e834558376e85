package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/twitchtv/twirp"

	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/internal/lkurl"
	"github.com/lkagent/lkagent/worker"
)

// conn holds the connection flags shared by the commands that talk to a
// LiveKit server.
type conn struct {
	url, apiKey, apiSecret string
	timeout                time.Duration
}

// addConn adds --url, --api-key, --api-secret and --timeout to f.
func addConn(f *flags) *conn {
	c := &conn{}
	f.fs.StringVar(&c.url, "url", "", "LiveKit server URL: ws, wss, http or https")
	f.fs.StringVar(&c.apiKey, "api-key", "", "API key")
	f.fs.StringVar(&c.apiSecret, "api-secret", "", "API secret; never printed")
	f.fs.DurationVar(&c.timeout, "timeout", 15*time.Second, "how long to wait for the server")
	f.env("url", worker.EnvURL)
	f.env("api-key", worker.EnvAPIKey)
	f.env("api-secret", worker.EnvAPISecret)
	for _, n := range []string{"url", "api-key", "api-secret", "timeout"} {
		f.conn[n] = true
	}
	return c
}

// check validates the connection flags for the command name.
func (c *conn) check(name string) error {
	if c.url == "" {
		return usagef(name, "missing --url or $%s: the LiveKit server, for example ws://127.0.0.1:7880 ('lkagent server' runs one)", worker.EnvURL)
	}
	u, err := url.Parse(c.url)
	if err != nil || u.Host == "" {
		return usagef(name, "--url %q is not a URL such as ws://127.0.0.1:7880", c.url)
	}
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	default:
		return usagef(name, "--url %q: the scheme must be ws, wss, http or https", c.url)
	}
	if c.apiKey == "" {
		return usagef(name, "missing --api-key or $%s", worker.EnvAPIKey)
	}
	if c.apiSecret == "" {
		return usagef(name, "missing --api-secret or $%s", worker.EnvAPISecret)
	}
	if c.timeout <= 0 {
		return usagef(name, "--timeout must be positive")
	}
	return nil
}

// httpURL is the server's HTTP base URL (ws becomes http, wss https).
func (c *conn) httpURL() string { return lkurl.HTTP(c.url) }

// apiError explains an error of a server API call in one line: what went
// wrong and what to do.
func (c *conn) apiError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
			return fmt.Errorf("%s: no answer from the LiveKit server at %s within %s: check --url, or raise --timeout", what, c.url, c.timeout)
		}
		return interrupted(ctx)
	}
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		return fmt.Errorf("%s: cannot resolve the host of %s (%s): check --url or $%s", what, c.url, dnsErr.Err, worker.EnvURL)
	case errors.As(err, &opErr):
		return fmt.Errorf("%s: cannot reach the LiveKit server at %s (%v): is it running? Check --url or $%s ('lkagent server' runs one locally)",
			what, c.url, opErr.Err, worker.EnvURL)
	}
	var te twirp.Error
	if errors.As(err, &te) {
		if te.Meta("http_error_from_intermediary") != "" && te.Code() != twirp.Unauthenticated && te.Code() != twirp.PermissionDenied {
			return fmt.Errorf("%s: %s does not answer like a LiveKit server (%s): check --url or $%s",
				what, c.url, twirpMessage(te), worker.EnvURL)
		}
		switch te.Code() {
		case twirp.Unauthenticated, twirp.PermissionDenied:
			return fmt.Errorf("%s: the LiveKit server at %s rejected the API key or secret (%s): check --api-key and --api-secret or $%s and $%s",
				what, c.url, te.Code(), worker.EnvAPIKey, worker.EnvAPISecret)
		case twirp.Internal, twirp.Unavailable, twirp.Unknown:
			if te.Meta("cause") != "" {
				// A transport error the client wrapped: not the server's answer.
				return fmt.Errorf("%s: cannot talk to the LiveKit server at %s: %s", what, c.url, te.Msg())
			}
		case twirp.Malformed, twirp.BadRoute:
			return fmt.Errorf("%s: %s does not answer like a LiveKit server (%s): check --url", what, c.url, twirpMessage(te))
		}
		return fmt.Errorf("%s: the LiveKit server answered %s: %s", what, te.Code(), twirpMessage(te))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// checkDeployment validates a deployment label by the rules the worker
// applies (package internal/deploy), before anything is sent. source names
// where the value came from: the flag ("--deployment") or its variable
// ("LIVEKIT_AGENT_DEPLOYMENT"); see flags.source.
func checkDeployment(name, source, deployment string) error {
	if !strings.HasPrefix(source, "-") && !strings.Contains(source, "_") {
		source = "--" + source // a bare flag name
	}
	if _, err := deploy.CheckDeployment(deployment); err != nil {
		return usagef(name, "%s=%s is not a valid deployment: %v", source, deploy.Quote(deployment), err)
	}
	return nil
}

// checkTarget validates the agent name and the deployment a command
// dispatches to, as the worker would, and prints a warning about a
// deployment with look-alike letters to e's stderr.
func checkTarget(e *env, f *flags, agentName, deployment string) error {
	if err := deploy.CheckAgentName(agentName); err != nil {
		return usagef(f.name, "%s=%s is not a valid agent name: %v", f.source("agent-name"), deploy.Quote(agentName), err)
	}
	if err := checkDeployment(f.name, f.source("deployment"), deployment); err != nil {
		return err
	}
	if warning, _ := deploy.CheckDeployment(deployment); warning != "" {
		fmt.Fprintf(e.stderr, "lkagent %s: warning: %s=%s %s\n", f.name, f.source("deployment"), deploy.Quote(deployment), warning)
	}
	return nil
}

// deploymentLabel shows a deployment in tables: "" is "(production)", in
// parentheses so that it never reads like a deployment named "production".
func deploymentLabel(d string) string {
	if d == "" {
		return "(production)"
	}
	return deploy.Escape(d)
}

// twirpMessage is the server's message without the nested "twirp error
// <code>: " prefixes.
func twirpMessage(te twirp.Error) string {
	msg := te.Msg()
	for strings.HasPrefix(msg, "twirp error ") {
		_, rest, ok := strings.Cut(msg, ": ")
		if !ok {
			break
		}
		msg = rest
	}
	return msg
}
