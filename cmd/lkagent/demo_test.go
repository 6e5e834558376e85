package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// 'lkagent demo' runs to completion against a server of its own and shows
// every dispatch routed to its own deployment.
func TestDemo(t *testing.T) {
	t.Parallel()
	start := time.Now()
	r := cli(t, cleanEnv(), "demo").mustOK(t)
	t.Logf("demo took %s", time.Since(start).Round(time.Millisecond))
	out := r.stdout
	if strings.Contains(out, "VIOLATION") {
		t.Fatalf("the demo reports a violation:\n%s", out)
	}
	for _, want := range []string{
		"production worker registered", "staging worker registered",
		"explicit → production", "explicit → staging", "token → production", "token → staging",
		"explicit → canary", `invalid deployment "bad_name"`,
		`the agent answered "echo[staging]: hello from caller-staging"`,
		"no worker ran it", "canary worker registered", "held dispatch served", "rejected before sending", "the server rejects it too",
		"6/6 OK: every job ran on a worker of its own deployment, nothing crossed over.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo output lacks %q", want)
		}
	}
	// The summary: each row's expectation met by the right worker.
	rows := map[string][]string{
		"explicit → production": {"production", "production", "OK"},
		"explicit → staging":    {"staging", "staging", "OK"},
		"token → production":    {"production", "production", "OK"},
		"token → staging":       {"staging", "staging", "OK"},
		"explicit → canary":     {"canary", "canary", "OK"},
		"invalid deployment":    {"rejected", "rejected", "OK"},
	}
	summary := out[strings.Index(out, "DISPATCH"):]
	for name, want := range rows {
		line := ""
		for _, l := range strings.Split(summary, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), name) {
				line = l
			}
		}
		f := strings.Fields(line)
		if len(f) < 3 || !slicesHasSuffix(f, want) {
			t.Errorf("summary row %q = %q, want it to end with %v", name, line, want)
		}
	}
	if !strings.Contains(out, "workers drained, server (pid") {
		t.Errorf("no clean stop line:\n%s", out)
	}
	assertGone(t, serverPID(t, out))
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}
}

func slicesHasSuffix(s, suffix []string) bool {
	if len(s) < len(suffix) {
		return false
	}
	for i := range suffix {
		if s[len(s)-len(suffix)+i] != suffix[i] {
			return false
		}
	}
	return true
}

// Ctrl-C in the middle of the demo stops everything: workers, server.
func TestDemoInterrupted(t *testing.T) {
	t.Parallel()
	d := start(t, cleanEnv(), "demo")
	d.waitFor(d.stdout, 2*time.Minute, "staging worker took job")
	d.signal(os.Interrupt)
	if code := d.wait(30 * time.Second); code != exitInterrupted {
		t.Fatalf("exit %d after Ctrl-C, want %d", code, exitInterrupted)
	}
	out := d.stdout.String()
	if !strings.Contains(out, "interrupted (SIGINT): stopping everything") || !strings.Contains(out, "workers drained, server (pid") {
		t.Fatalf("no clean stop:\n%s", out)
	}
	if got := strings.TrimSpace(d.stderr.String()); got != "lkagent: demo: interrupted (SIGINT)" {
		t.Fatalf("stderr = %q", got)
	}
	assertGone(t, serverPID(t, out))
}
