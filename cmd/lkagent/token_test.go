package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/wait"
)

// A token made by 'lkagent token' decodes with its agent deployment, and
// joining with it dispatches that deployment's worker, not the other.
func TestTokenDispatchesDeployment(t *testing.T) {
	t.Parallel()
	agent, room := uniq("agent"), uniq("room")
	staging, stagingAddr := startWorkerCmd(t, srvEnv(), "--agent-name", agent, "--deployment", "staging")
	prod, prodAddr := startWorkerCmd(t, srvEnv(), "--agent-name", agent)
	if s, p := staging.view(stagingAddr).Deployment, prod.view(prodAddr).Deployment; s != "staging" || p != "" {
		t.Fatalf("/worker: deployments %q and %q, want staging and production", s, p)
	}
	lkserver.AwaitRouting()

	token := strings.TrimSpace(cli(t, srvEnv(), "token", "--identity", "caller", "--room", room,
		"--agent-name", agent, "--deployment", "staging", "--agent-metadata", "from-token", "--ttl", "10m").mustOK(t).stdout)
	if strings.Count(token, ".") != 2 || strings.ContainsAny(token, " \n") {
		t.Fatalf("token output = %q, want one JWT", token)
	}

	// Decoded with the secret from the environment: verified.
	out := cli(t, srvEnv(), "token", "--decode", token).mustOK(t).stdout
	for _, want := range []string{"verified with the API secret", "caller", room, `agent "` + agent + `", deployment staging`, `metadata "from-token"`, "valid for"} {
		if !strings.Contains(out, want) {
			t.Errorf("decode output lacks %q:\n%s", want, out)
		}
	}
	var claims decodedJSON
	out = cli(t, srvEnv(), "token", "--decode", token, "--json").mustOK(t).stdout
	if err := json.Unmarshal([]byte(out), &claims); err != nil {
		t.Fatalf("decode --json does not parse: %v\n%s", err, out)
	}
	if !claims.Verified || claims.Identity != "caller" || claims.Room != room || claims.APIKey != srv.APIKey() || claims.Expired ||
		len(claims.Agents) != 1 || claims.Agents[0].AgentName != agent || claims.Agents[0].Deployment != "staging" ||
		time.Until(claims.ExpiresAt) > 10*time.Minute || time.Until(claims.ExpiresAt) < 9*time.Minute {
		t.Fatalf("decoded claims = %+v", claims)
	}
	if strings.Contains(out, srv.APISecret()) {
		t.Fatal("the decoded token shows the secret")
	}
	// Without a secret: shown, not verified.
	out = cli(t, cleanEnv(), "token", "--decode", token).mustOK(t).stdout
	if !strings.Contains(out, "not verified") || !strings.Contains(out, "deployment staging") {
		t.Fatalf("decode without a secret:\n%s", out)
	}
	// With the wrong secret: the claims, then one error line and exit 1.
	r := cli(t, cleanEnv(), "token", "--decode", token, "--api-secret", "wrong")
	if r.code != exitFailure || !strings.Contains(r.stdout, "DOES NOT VERIFY") ||
		strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "does not verify with the API secret") {
		t.Fatalf("decode with a wrong secret: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	cli(t, cleanEnv(), "token", "--decode", "not-a-token").mustFail(t, exitFailure, "not a JWT")

	// Joining with the token creates the room and dispatches staging.
	caller, err := lksdk.ConnectToRoomWithToken(srv.URL(), token, lksdk.NewRoomCallback())
	if err != nil {
		t.Fatalf("join with the token: %v", err)
	}
	defer caller.Disconnect()
	staging.until(30*time.Second, "job started in "+room+" on the staging worker", func() bool { return staging.view(stagingAddr).started(room) })
	if wait.Within(time.Second, func() bool { _, ok := prod.stdout.Line("room=" + room); return ok }) {
		t.Fatal("the production worker saw the staging job")
	}
	staging.mustLine(staging.stdout, "msg=registered", "deployment=staging")
	prod.mustLine(prod.stdout, "msg=registered", `deployment=""`)
	if line := staging.mustLine(staging.stdout, `msg="job started"`, "room="+room); !strings.Contains(line, "deployment=staging") {
		t.Fatalf("job started without its deployment: %s", line)
	}
}

// A token without --agent-name dispatches nothing.
func TestTokenWithoutAgent(t *testing.T) {
	t.Parallel()
	token := strings.TrimSpace(cli(t, srvEnv(), "token", "--identity", "viewer", "--room", "r").mustOK(t).stdout)
	out := cli(t, srvEnv(), "token", "--decode", token).mustOK(t).stdout
	if !strings.Contains(out, "no agent") || !strings.Contains(out, "viewer") {
		t.Fatalf("decode:\n%s", out)
	}
}
