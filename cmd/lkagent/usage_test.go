package main

import (
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	env := srvEnv()
	for _, tc := range []struct {
		args  []string
		parts []string
	}{
		{[]string{"dispatch", "create", "--agent-name", "a"}, []string{"dispatch create: missing --room", "--help"}},
		{[]string{"dispatch", "create", "--room", "r"}, []string{"missing --agent-name"}},
		{[]string{"dispatch", "list"}, []string{"dispatch list: missing --room"}},
		{[]string{"dispatch", "delete", "--room", "r"}, []string{"missing --id"}},
		{[]string{"dispatch", "create", "--room", "r", "--agent-name", "a", "--bogus"}, []string{"flag provided but not defined: -bogus"}},
		{[]string{"dispatch", "list", "--room", "r", "extra"}, []string{`unexpected argument "extra"`}},
		{[]string{"dispatch"}, []string{"dispatch needs a subcommand"}},
		{[]string{"dispatch", "show"}, []string{`unknown subcommand "dispatch show"`}},
		{[]string{"frobnicate"}, []string{`unknown command "frobnicate"`, "lkagent help"}},
		{[]string{"token", "--room", "r"}, []string{"missing --identity"}},
		{[]string{"token", "--identity", "i"}, []string{"missing --room"}},
		{[]string{"token", "--identity", "i", "--room", "r", "--deployment", "staging"}, []string{"--deployment needs --agent-name"}},
		{[]string{"worker"}, []string{"missing --agent-name"}},
		{[]string{"worker", "--agent-name", "a", "--max-jobs", "-1"}, []string{"must not be negative"}},
		{[]string{"worker", "--agent-name", "a", "--idle", "2"}, []string{"--idle and --memory-limit-mib need --processes"}},
		{[]string{"worker", "--agent-name", "a", "--processes", "--memory-limit-mib", "-5"}, []string{"--memory-limit-mib must not be negative"}},
		{[]string{"dispatch", "list", "--room", "r", "--url", "ftp://x"}, []string{"scheme must be ws, wss, http or https"}},
		{[]string{"dispatch", "list", "--room", "r", "--timeout", "soon"}, []string{"invalid value"}},
		{[]string{"server", "--port", "70000"}, []string{"not a port"}},
		{[]string{"server", "--api-key", "k"}, []string{"both --api-key and --api-secret"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			cli(t, env, tc.args...).mustFail(t, exitUsage, tc.parts...)
		})
	}
	// Connection settings missing from flags and environment.
	cli(t, cleanEnv(), "dispatch", "list", "--room", "r").mustFail(t, exitUsage, "missing --url or $LIVEKIT_URL")
	cli(t, cleanEnv("LIVEKIT_URL=ws://x:1"), "dispatch", "list", "--room", "r").mustFail(t, exitUsage, "missing --api-key")
	cli(t, cleanEnv(), "token", "--identity", "i", "--room", "r").mustFail(t, exitUsage, "--api-secret")
	// A bad value from the environment names the variable.
	cli(t, cleanEnv("LKAGENT_MAX_JOBS=many"), "worker", "--agent-name", "a").mustFail(t, exitUsage, "$LKAGENT_MAX_JOBS")

	r := cli(t, env)
	if r.code != exitUsage || !strings.Contains(r.stderr, "Usage: lkagent <command>") {
		t.Fatalf("no arguments: exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	out := cli(t, cleanEnv(), "help").mustOK(t).stdout
	for _, c := range commands() {
		if !strings.Contains(out, c.name) {
			t.Errorf("help does not list %q", c.name)
		}
	}
	for _, args := range [][]string{
		{"demo", "--help"}, {"dispatch", "create", "--help"}, {"dispatch", "list", "-h"}, {"dispatch", "delete", "--help"},
		{"token", "--help"}, {"server", "--help"}, {"worker", "--help"}, {"help", "worker"},
	} {
		out := cli(t, cleanEnv(), args...).mustOK(t).stdout
		name := args[0]
		if name == "help" {
			name = args[1]
		}
		if !strings.HasPrefix(out, "Usage: lkagent "+name) {
			t.Errorf("%v: help starts %q", args, out[:min(len(out), 60)])
		}
	}
	for _, args := range [][]string{{"dispatch", "--help"}, {"help", "dispatch"}} {
		out := cli(t, cleanEnv(), args...).mustOK(t).stdout
		for _, sub := range []string{"create", "list", "delete"} {
			if !strings.Contains(out, "  "+sub+" ") {
				t.Errorf("%v does not list %q:\n%s", args, sub, out)
			}
		}
	}
	// Help names the environment variable of each flag that has one.
	out = cli(t, cleanEnv(), "dispatch", "create", "--help").mustOK(t).stdout
	for _, want := range []string{"--deployment", "--url", "env LIVEKIT_URL", "env LIVEKIT_API_SECRET", "--room string", "required"} {
		if !strings.Contains(out, want) {
			t.Errorf("dispatch create --help lacks %q:\n%s", want, out)
		}
	}
}
