package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/guard"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

func TestGuardUsage(t *testing.T) {
	t.Parallel()
	out := cli(t, cleanEnv(), "guard", "--help").mustOK(t).stdout
	for _, want := range []string{"Usage: lkagent guard", "--listen", "LKAGENT_GUARD_LISTEN", "env LIVEKIT_URL", "--max-restarts",
		"POST /webhook", "webhook: {api_key: KEY, urls: [http://ADDR/webhook]}", "401"} {
		if !strings.Contains(out, want) {
			t.Errorf("guard --help lacks %q:\n%s", want, out)
		}
	}
	cli(t, cleanEnv(), "guard").mustFail(t, exitUsage, "guard: missing --url or $LIVEKIT_URL")
	cli(t, srvEnv(), "guard", "--max-restarts", "0").mustFail(t, exitUsage, "--max-restarts must be at least 1")
	cli(t, srvEnv(), "guard", "--backoff", "2m").mustFail(t, exitUsage, "must not exceed --max-backoff")
	cli(t, srvEnv(), "guard", "--window", "soon").mustFail(t, exitUsage, "invalid value")
	cli(t, srvEnv("LIVEKIT_API_SECRET=wrong-secret-wrong-secret-wrong-secret"), "guard", "--listen", closedPort(t)).
		mustFail(t, exitFailure, "rejected the API key or secret", "--api-secret")
	cli(t, srvEnv(), "guard", "--listen", "127.0.0.1:99999").mustFailLogged(t, exitFailure, "cannot listen on --listen")
}

// 'lkagent guard' against a server that posts its webhooks to it: an agent
// that fails is dispatched again; unsigned webhooks get 401; /healthz and
// /metrics answer; SIGTERM stops it with status 0.
func TestGuardRestartsFailedAgent(t *testing.T) {
	t.Parallel()
	addr := closedPort(t)
	s := lkserver.StartTB(t, lkserver.Options{WebhookURLs: []string{"http://" + addr + "/webhook"}})
	env := cleanEnv("LIVEKIT_URL="+s.URL(), "LIVEKIT_API_KEY="+s.APIKey(), "LIVEKIT_API_SECRET="+s.APISecret())
	g := start(t, env, "guard", "--listen", addr)
	g.waitFor(g.stdout, 30*time.Second, `msg="guard listening"`, "addr="+addr)

	get := func(path string) (int, string) {
		t.Helper()
		res, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}
	res, err := http.Post("http://"+addr+"/webhook", "application/webhook+json", strings.NewReader(`{"event":"participant_left"}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unsigned webhook: %d, want 401", res.StatusCode)
	}

	// An agent that fails in its first job (leaving with AGENT_ERROR) and
	// serves in the next.
	agentName, room := uniq("agent"), uniq("room")
	jobs := make(chan string, 4)
	w, err := worker.New(worker.Options{URL: s.URL(), APIKey: s.APIKey(), APISecret: s.APISecret(), AgentName: agentName,
		DrainTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)},
		func(ctx context.Context, j *job.Job) error {
			r, err := j.Connect(ctx, lksdk.NewRoomCallback())
			if err != nil {
				return err
			}
			jobs <- j.Info().GetAttributes()[guard.AttrRestarts]
			if j.Info().GetAttributes()[guard.AttrRestarts] == "" {
				r.DisconnectWithReason(livekit.DisconnectReason_AGENT_ERROR)
				return io.ErrUnexpectedEOF
			}
			<-ctx.Done()
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for !w.Snapshot().Registered {
		if time.Now().After(deadline) {
			t.Fatal("the worker did not register")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(lkserver.RegistrationSettle)
	caller, err := lksdk.ConnectToRoom(s.URL(), lksdk.ConnectInfo{APIKey: s.APIKey(), APISecret: s.APISecret(),
		RoomName: room, ParticipantIdentity: "caller"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer caller.Disconnect()
	cli(t, env, "dispatch", "create", "--room", room, "--agent-name", agentName).mustOK(t)
	for i, want := range []string{"", "1"} {
		select {
		case got := <-jobs:
			if got != want {
				t.Fatalf("job %d carries restarts %q, want %q", i, got, want)
			}
		case <-time.After(45 * time.Second):
			t.Fatalf("job %d did not start\n%s", i, g.stdout)
		}
	}
	g.waitFor(g.stdout, 5*time.Second, `msg="agent restarted"`, "room="+room, "disconnect_reason=AGENT_ERROR")
	code, metrics := get("/metrics")
	if code != http.StatusOK || !strings.Contains(metrics, `lkagent_restarts_total{agent_name="`+agentName+`",deployment="_production"} 1`) ||
		!strings.Contains(metrics, `lkagent_guard_webhooks_total{result="unauthorized"} 1`) {
		t.Fatalf("/metrics = %d:\n%s", code, metrics)
	}

	g.signal(syscall.SIGTERM)
	if code := g.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, g.stderr)
	}
	g.waitFor(g.stdout, time.Second, `msg="guard stopped"`)
	if out := g.stdout.String() + g.stderr.String(); strings.Contains(out, s.APISecret()) || bytes.Contains([]byte(metrics), []byte(s.APISecret())) {
		t.Fatal("the guard showed the API secret")
	}
}
