package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Create, list and delete dispatches that name a deployment, in tables and
// in JSON.
func TestDispatchCreateListDelete(t *testing.T) {
	t.Parallel()
	room, agent := uniq("room"), uniq("agent")

	var staging dispatchJSON
	out := cli(t, srvEnv(), "dispatch", "create", "--room", room, "--agent-name", agent,
		"--deployment", "staging", "--metadata", `{"tier":"gold"}`, "--json").mustOK(t).stdout
	if err := json.Unmarshal([]byte(out), &staging); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out)
	}
	if !strings.HasPrefix(staging.ID, "AD_") || staging.Room != room || staging.AgentName != agent ||
		staging.Deployment != "staging" || staging.Metadata != `{"tier":"gold"}` || staging.CreatedAt.IsZero() {
		t.Fatalf("created dispatch = %+v", staging)
	}

	// Production, in a table; the room and the agent name from the environment.
	out = cli(t, srvEnv("LKAGENT_ROOM="+room, "LKAGENT_AGENT_NAME="+agent), "dispatch", "create").
		mustOKNoting(t, "dispatch create", "agent-name: "+agent+" (from LKAGENT_AGENT_NAME)", "room: "+room+" (from LKAGENT_ROOM)").stdout
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "DEPLOYMENT") {
		t.Fatalf("table = %q", out)
	}
	prodID := strings.Fields(lines[1])[0]
	if !strings.HasPrefix(prodID, "AD_") || !strings.Contains(lines[1], "(production)") || !strings.Contains(lines[1], agent) {
		t.Fatalf("production dispatch row = %q", lines[1])
	}

	// The table lists both, each with its deployment.
	out = cli(t, srvEnv(), "dispatch", "list", "--room", room).mustOK(t).stdout
	row := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			row[f[0]] = l
		}
	}
	if r := row[staging.ID]; !strings.Contains(r, "staging") || !strings.Contains(r, agent) {
		t.Errorf("list row of the staging dispatch = %q", r)
	}
	if r := row[prodID]; !strings.Contains(r, "(production)") {
		t.Errorf("list row of the production dispatch = %q", r)
	}

	// JSON for scripts: every dispatch with its deployment.
	var list []dispatchJSON
	out = cli(t, srvEnv(), "dispatch", "list", "--room", room, "--json").mustOK(t).stdout
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("list --json does not parse: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, d := range list {
		if d.AgentName == agent {
			got[d.ID] = d.Deployment
		}
	}
	if len(got) != 2 || got[staging.ID] != "staging" || got[prodID] != "" {
		t.Fatalf("list --json: dispatches of %s = %v, want %s=staging and %s=\"\"", agent, got, staging.ID, prodID)
	}

	// Delete one: it is shown, and gone from the list.
	out = cli(t, srvEnv(), "dispatch", "delete", "--room", room, "--id", staging.ID).mustOK(t).stdout
	if !strings.Contains(out, staging.ID) || !strings.Contains(out, "staging") {
		t.Fatalf("delete output = %q", out)
	}
	out = cli(t, srvEnv(), "dispatch", "list", "--room", room).mustOK(t).stdout
	if strings.Contains(out, staging.ID) || !strings.Contains(out, prodID) {
		t.Fatalf("list after delete:\n%s", out)
	}
	if strings.Contains(out, srv.APISecret()) {
		t.Fatal("the output shows the API secret")
	}

	// Deleting it again: a clear error from the server.
	cli(t, srvEnv(), "dispatch", "delete", "--room", room, "--id", staging.ID).
		mustFail(t, exitFailure, "delete dispatch", staging.ID, "not_found")
}

func TestDispatchListOfMissingRoom(t *testing.T) {
	t.Parallel()
	room := uniq("never-created")
	cli(t, srvEnv(), "dispatch", "list", "--room", room).mustFail(t, exitFailure, room, "does not exist")
}

// A deployment the server would refuse is refused before anything is sent:
// the URL points nowhere, yet the error is the deployment's, with exit 2.
func TestInvalidDeploymentRejectedLocally(t *testing.T) {
	t.Parallel()
	env := cleanEnv("LIVEKIT_URL=ws://"+closedPort(t), "LIVEKIT_API_KEY=k", "LIVEKIT_API_SECRET=s")
	for _, dep := range []string{"bad_name", "has space", strings.Repeat("x", 65), "tab\there"} {
		cli(t, env, "dispatch", "create", "--room", "r", "--agent-name", "a", "--deployment", dep).
			mustFail(t, exitUsage, "--deployment", "is not a valid deployment", "'_'")
	}
	cli(t, env, "dispatch", "create", "--room", "r", "--agent-name", "a", "--deployment", "bad_name").
		mustFail(t, exitUsage, "reserved character '_'")
	cli(t, env, "dispatch", "create", "--room", "r", "--agent-name", "a", "--deployment", strings.Repeat("x", 65)).
		mustFail(t, exitUsage, "exceeds 64 bytes")
	cli(t, env, "token", "--identity", "i", "--room", "r", "--agent-name", "a", "--deployment", "bad_name").
		mustFail(t, exitUsage, "is not a valid deployment")
	cli(t, env, "worker", "--agent-name", "a", "--deployment", "bad_name").
		mustFail(t, exitUsage, "is not a valid deployment")
	cli(t, cleanEnv("LIVEKIT_URL=ws://"+closedPort(t), "LIVEKIT_API_KEY=k", "LIVEKIT_API_SECRET=s", "LIVEKIT_AGENT_DEPLOYMENT=bad_env"),
		"worker", "--agent-name", "a").mustFail(t, exitUsage, `"bad_env" is not a valid deployment`)
	// A 64-byte deployment is valid: the failure is then the unreachable server.
	cli(t, env, "dispatch", "create", "--room", "r", "--agent-name", "a", "--deployment", strings.Repeat("x", 64)).
		mustFail(t, exitFailure, "cannot reach the LiveKit server")
}

func TestWrongSecret(t *testing.T) {
	t.Parallel()
	const secret = "not-the-secret-0123456789"
	env := srvEnv("LIVEKIT_API_SECRET=" + secret)
	r := cli(t, env, "dispatch", "list", "--room", "r")
	r.mustFail(t, exitFailure, "rejected the API key or secret", "--api-secret")
	if strings.Contains(r.stderr, secret) {
		t.Fatal("the error shows the secret")
	}
	cli(t, srvEnv(), "dispatch", "create", "--room", "r", "--agent-name", "a", "--api-secret", secret).
		mustFail(t, exitFailure, "rejected the API key or secret")
	r = cli(t, srvEnv(), "worker", "--agent-name", "a", "--api-secret", secret)
	r.mustFailLogged(t, exitFailure, "rejected the API key or secret")
	if strings.Contains(r.stdout+r.stderr, secret) {
		t.Fatal("the worker shows the secret")
	}
}

func TestUnreachableServer(t *testing.T) {
	t.Parallel()
	url := "ws://" + closedPort(t)
	env := cleanEnv("LIVEKIT_URL="+url, "LIVEKIT_API_KEY=k", "LIVEKIT_API_SECRET=s")
	cli(t, env, "dispatch", "list", "--room", "r").mustFail(t, exitFailure, "cannot reach the LiveKit server at "+url, "connection refused")
	cli(t, env, "dispatch", "create", "--room", "r", "--agent-name", "a", "--deployment", "staging").
		mustFail(t, exitFailure, "cannot reach the LiveKit server")
	cli(t, env, "dispatch", "delete", "--room", "r", "--id", "AD_x").mustFail(t, exitFailure, "cannot reach the LiveKit server")
	cli(t, env, "worker", "--agent-name", "a", "--max-retry", "1").
		mustFailLogged(t, exitFailure, "cannot reach the LiveKit server at "+url, "connection refused", "--max-retry")
	cli(t, cleanEnv("LIVEKIT_URL=ws://nowhere.invalid:7880", "LIVEKIT_API_KEY=k", "LIVEKIT_API_SECRET=s"),
		"dispatch", "list", "--room", "r").mustFail(t, exitFailure, "cannot resolve the host")
}

func TestNotALiveKitServer(t *testing.T) {
	t.Parallel()
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	cli(t, cleanEnv("LIVEKIT_URL="+web.URL, "LIVEKIT_API_KEY=k", "LIVEKIT_API_SECRET=s"), "dispatch", "list", "--room", "r").
		mustFail(t, exitFailure, web.URL+" does not answer like a LiveKit server", "404")
}

// dispatch and token read the deployment from LIVEKIT_AGENT_DEPLOYMENT, as
// the worker does: with it exported, a dispatch goes to that deployment.
func TestDeploymentFromTheWorkersVariable(t *testing.T) {
	t.Parallel()
	room, agent := uniq("room"), uniq("agent")
	var d dispatchJSON
	out := cli(t, srvEnv("LIVEKIT_AGENT_DEPLOYMENT=staging"), "dispatch", "create", "--room", room, "--agent-name", agent, "--json").
		mustOKNoting(t, "dispatch create", "deployment: staging (from LIVEKIT_AGENT_DEPLOYMENT)").stdout
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out)
	}
	if d.Deployment != "staging" {
		t.Fatalf("dispatch went to deployment %q with LIVEKIT_AGENT_DEPLOYMENT=staging", d.Deployment)
	}
	tok := strings.TrimSpace(cli(t, srvEnv("LIVEKIT_AGENT_DEPLOYMENT=canary"), "token", "--identity", "i", "--room", room,
		"--agent-name", agent).mustOKNoting(t, "token", "deployment: canary (from LIVEKIT_AGENT_DEPLOYMENT)").stdout)
	if out := cli(t, srvEnv(), "token", "--decode", tok).mustOK(t).stdout; !strings.Contains(out, "deployment canary") {
		t.Fatalf("token with LIVEKIT_AGENT_DEPLOYMENT=canary decodes as:\n%s", out)
	}
}

// A new room is created with its dispatch only (no automatic agent's); with
// --wait, a dispatch no worker takes is an error that says so.
func TestDispatchCreateNewRoomAndWait(t *testing.T) {
	t.Parallel()
	room, agent := uniq("room"), uniq("agent")
	cli(t, srvEnv(), "dispatch", "create", "--room", room, "--agent-name", agent, "--deployment", "canary",
		"--wait", "2s").mustFail(t, exitFailure, "took the job within --wait 2s")
	var list []dispatchJSON
	out := cli(t, srvEnv(), "dispatch", "list", "--room", room, "--json").mustOK(t).stdout
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("list --json does not parse: %v\n%s", err, out)
	}
	if len(list) != 1 || list[0].AgentName != agent || list[0].Deployment != "canary" {
		t.Fatalf("the new room has %+v, want only the canary dispatch of %s", list, agent)
	}
	cli(t, srvEnv(), "dispatch", "create", "--room", room, "--agent-name", agent, "--wait", "-1s").mustFail(t, exitUsage, "--wait must not be negative")
}
