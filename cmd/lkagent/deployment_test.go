package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

// mustOKNoting fails the test unless the run exited 0 and its stderr is
// exactly the notes of command name about values from the environment.
func (r runResult) mustOKNoting(t *testing.T, name string, notes ...string) runResult {
	t.Helper()
	want := ""
	for _, n := range notes {
		want += "lkagent " + name + ": " + n + "\n"
	}
	if r.code != 0 || r.stderr != want {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s\nwant stderr:\n%s", r.code, r.stdout, r.stderr, want)
	}
	return r
}

// The deployment traps of dispatch create and token: refused before
// anything is sent (the URL points nowhere), with exit 2 and a message
// naming where the value came from.
func TestDeploymentTrapsRefused(t *testing.T) {
	t.Parallel()
	base := []string{"LIVEKIT_URL=ws://" + closedPort(t), "LIVEKIT_API_KEY=k", "LIVEKIT_API_SECRET=s"}
	for _, tc := range []struct {
		name  string
		env   []string
		args  []string
		parts []string
	}{
		{"production flag", nil, []string{"--deployment", "production"},
			[]string{`--deployment="production" is not a valid deployment`, `production is the empty deployment ""`}},
		{"production from the environment", []string{"LIVEKIT_AGENT_DEPLOYMENT=production"}, nil,
			[]string{`LIVEKIT_AGENT_DEPLOYMENT="production" is not a valid deployment`, "unset the variable"}},
		{"Prod", nil, []string{"--deployment", "Prod"}, []string{"names production"}},
		{"default", []string{"LIVEKIT_AGENT_DEPLOYMENT=default"}, nil, []string{"LIVEKIT_AGENT_DEPLOYMENT", "names production"}},
		{"a pair of quotes", []string{`LIVEKIT_AGENT_DEPLOYMENT=""`}, nil, []string{`LIVEKIT_AGENT_DEPLOYMENT="\"\""`, "names production"}},
		{"trailing space from the environment", []string{"LIVEKIT_AGENT_DEPLOYMENT=staging "}, nil,
			[]string{`LIVEKIT_AGENT_DEPLOYMENT="staging " is not a valid deployment`, "whitespace"}},
		{"no-break space", nil, []string{"--deployment", "staging\u00a0"}, []string{`"staging\u00a0"`, "U+00A0"}},
		{"zero-width space", nil, []string{"--deployment", "stag\u200bing"}, []string{`"stag\u200bing"`, "U+200B"}},
		{"newline in the agent name", nil, []string{"--agent-name", "bot\nx"},
			[]string{`--agent-name="bot\nx" is not a valid agent name`, "U+000A"}},
		{"escape in the agent name from the environment", []string{"LKAGENT_AGENT_NAME=bot\x1b[2J"}, nil,
			[]string{`LKAGENT_AGENT_NAME="bot\x1b[2J" is not a valid agent name`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := []string{"--room", "r"}
			if !strings.Contains(strings.Join(tc.args, " "), "--agent-name") && !strings.Contains(strings.Join(tc.env, " "), "AGENT_NAME") {
				args = append(args, "--agent-name", "a")
			}
			env := cleanEnv(append(append([]string{}, base...), tc.env...)...)
			for _, cmd := range [][]string{{"dispatch", "create"}, {"token", "--identity", "i"}} {
				cli(t, env, append(append(cmd, args...), tc.args...)...).mustFail(t, exitUsage, tc.parts...)
			}
		})
	}
}

// A deployment with look-alike letters is dispatched to, with a warning;
// the value from the environment is noted.
func TestLookAlikeDeploymentWarned(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("needs the real server")
	}
	room, agent := uniq("room"), uniq("agent")
	r := cli(t, srvEnv("LIVEKIT_AGENT_DEPLOYMENT=st\u0430ging"), "dispatch", "create", "--room", room, "--agent-name", agent)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], `lkagent dispatch create: warning: LIVEKIT_AGENT_DEPLOYMENT="st\u0430ging" mixes scripts (Cyrillic, Latin)`) ||
		lines[1] != "lkagent dispatch create: deployment: st\u0430ging (from LIVEKIT_AGENT_DEPLOYMENT)" {
		t.Fatalf("stderr:\n%s", r.stderr)
	}
}

// An agent name with a newline, dispatched through the API (the server
// takes it), is shown escaped in dispatch list's table: it cannot break a
// row in two.
func TestDispatchListEscapesNames(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("needs the real server")
	}
	room := uniq("room")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api := lksdk.NewAgentDispatchServiceClient(srv.URL(), srv.APIKey(), srv.APISecret())
	if _, err := api.CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: "bad\nname\tx", Metadata: "m\r\n"}); err != nil {
		t.Fatal(err)
	}
	out := cli(t, srvEnv(), "dispatch", "list", "--room", room).mustOK(t).stdout
	// The room was created with the dispatch, which added the automatic
	// agent's: a header and two rows, one of them ours, whole.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	found := false
	for _, l := range lines[1:] {
		found = found || strings.Contains(l, `"bad\nname\tx"`) && strings.Contains(l, `"m\r\n"`)
	}
	if len(lines) != 3 || !found || strings.ContainsAny(out, "\t\r") {
		t.Fatalf("table:\n%s", out)
	}
}

// Long-running commands say which values they took from the environment
// in their output: the worker and guard in their log, the server and
// console on their screen.
func TestLongRunningCommandsNoteTheEnvironment(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("needs the real server")
	}
	for _, tc := range []struct {
		env         []string
		args        []string
		want, ready string
	}{
		{srvEnv("LIVEKIT_AGENT_DEPLOYMENT=staging"), []string{"worker", "--agent-name", uniq("agent"), "--http-addr", ""},
			`msg="from the environment: deployment: staging (from LIVEKIT_AGENT_DEPLOYMENT)"`, "registered"},
		{srvEnv("LKAGENT_GUARD_LISTEN=" + closedPort(t)), []string{"guard"}, "from the environment: listen: 127.0.0.1:", "guard listening"},
		{cleanEnv("LKAGENT_SERVER_PORT=0"), []string{"server"}, "port: 0 (from LKAGENT_SERVER_PORT)", "export LIVEKIT_API_SECRET="},
	} {
		p := start(t, tc.env, tc.args...)
		p.waitFor(p.stdout, time.Minute, tc.want)
		p.waitFor(p.stdout, time.Minute, tc.ready)
		p.signal(os.Interrupt)
		if code := p.wait(time.Minute); code != 0 {
			t.Errorf("lkagent %s: exit %d after SIGINT", tc.args[0], code)
		}
	}
}

func TestDevUsage(t *testing.T) {
	t.Parallel()
	cli(t, cleanEnv(), "dev").mustFail(t, exitUsage, "missing PACKAGE")
	cli(t, cleanEnv(), "dev", "--agent-name", "a").mustFail(t, exitUsage, "missing PACKAGE")
	cli(t, srvEnv(), "dev", ".").mustFail(t, exitUsage, "give --agent-name", "LIVEKIT_URL")
	cli(t, srvEnv(), "dev", ".", "--agent-name", "bot\n").mustFail(t, exitUsage, `--agent-name="bot\n" is not a valid agent name`)
	if out := cli(t, cleanEnv(), "dev", "--help").mustOK(t).stdout; !strings.Contains(out, "Usage: lkagent dev PACKAGE") {
		t.Errorf("help:\n%s", out)
	}
}
