package guard_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/utils/protojson"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"

	"github.com/lkagent/lkagent/guard"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/wait"
)

// The claim the guard relies on, checked on the real server: of
// concurrent deletes of one dispatch exactly one succeeds, and deleting a
// deleted dispatch is "not found".
func TestDeleteDispatchIsAnAtomicClaim(t *testing.T) {
	t.Parallel()
	s := server(t)
	room := uniq("claim")
	s.join(t, room)
	for round := range 10 {
		d := s.createDispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: uniq("nobody")})
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok, notFound := 0, 0
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := lksdk.NewAgentDispatchServiceClient(s.srv.HTTPURL(), s.srv.APIKey(), s.srv.APISecret())
				_, err := c.DeleteDispatch(context.Background(), &livekit.DeleteAgentDispatchRequest{Room: room, DispatchId: d.Id})
				var te twirp.Error
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case errors.As(err, &te) && te.Code() == twirp.NotFound:
					notFound++
				default:
					t.Errorf("delete: %v", err)
				}
			}()
		}
		wg.Wait()
		if ok != 1 || notFound != 15 {
			t.Fatalf("round %d: %d deletes succeeded and %d found nothing, want 1 and 15", round, ok, notFound)
		}
	}
	d := s.createDispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: uniq("nobody")})
	if _, err := s.dispatch.DeleteDispatch(context.Background(), &livekit.DeleteAgentDispatchRequest{Room: room, DispatchId: d.Id}); err != nil {
		t.Fatal(err)
	}
	_, err := s.dispatch.DeleteDispatch(context.Background(), &livekit.DeleteAgentDispatchRequest{Room: room, DispatchId: d.Id})
	var te twirp.Error
	if !errors.As(err, &te) || te.Code() != twirp.NotFound {
		t.Fatalf("second delete: %v, want not_found", err)
	}
	t.Logf("10 rounds of 16 concurrent DeleteDispatch: 1 success each; a second delete answers: %v", err)
}

// An agent that always fails is restarted MaxRestarts times, then refused
// with a log line and a count; restarts are spaced by the backoff.
func TestAlwaysFailingAgentIsCapped(t *testing.T) {
	t.Parallel()
	s := server(t)
	room := uniq("always-dies")
	g := newGuard(t, s.srv, guard.Options{MaxRestarts: 3, Backoff: 300 * time.Millisecond, MaxBackoff: 2 * time.Second})
	route(t, room, g.wh)
	a := startAgent(t, s, "staging", die)
	s.join(t, room)
	start := time.Now()
	s.createDispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: a.name, Deployment: "staging"})

	wait.Until(t, 60*time.Second, "the cap_reached refusal counted", func() bool {
		return g.metric(t, "lkagent_restart_refusals_total", "agent_name", a.name, "deployment", "staging", "reason", "cap_reached") >= 1
	})
	t.Logf("refused after %s", time.Since(start).Round(time.Millisecond))
	if n := g.metric(t, "lkagent_restarts_total", "agent_name", a.name, "deployment", "staging"); n != 3 {
		t.Errorf("lkagent_restarts_total = %v, want 3", n)
	}
	if n := g.metric(t, "lkagent_restart_refusals_total", "agent_name", a.name, "deployment", "staging", "reason", "cap_reached"); n != 1 {
		t.Errorf("cap_reached refusals = %v, want 1", n)
	}
	wait.Holds(t, 2*time.Second, "no job beyond the first and 3 restarts", func() bool { return len(a.jobs(room)) <= 4 })
	t.Log(g.line(t, "restart refused", "reason=cap_reached", "agent_name="+a.name))
	runs := a.jobs(room)
	if len(runs) != 4 {
		t.Fatalf("%d jobs ran, want 4 (the first and 3 restarts): %v", len(runs), runs)
	}
	var gaps []string
	for i := 1; i < len(runs); i++ {
		gaps = append(gaps, runs[i].at.Sub(runs[i-1].at).Round(time.Millisecond).String())
	}
	t.Logf("from one failing agent joining to the next (backoff 0s, 300ms, 600ms): %s", strings.Join(gaps, ", "))
	for i, r := range runs[1:] {
		if want := string(rune('1' + i)); r.restarts != want {
			t.Errorf("restart %d carries %s=%q, want %q", i+1, guard.AttrRestarts, r.restarts, want)
		}
	}
	var ours []*livekit.AgentDispatch
	for _, d := range s.dispatches(t, room) {
		if d.AgentName == a.name {
			ours = append(ours, d)
		}
	}
	if len(ours) != 1 || ours[0].Attributes[guard.AttrRestarts] != "3" {
		t.Errorf("dispatches after: %v, want the third restart's only", ours)
	}
	for _, l := range strings.Split(g.log.String(), "\n") {
		if strings.Contains(l, "agent restarted") {
			t.Log(l)
		}
	}
}

// A worker process is SIGKILLed while its agent serves a caller: the
// server reports the agent gone (CONNECTION_TIMEOUT, ~20 s later), the guard
// restarts it, and the other worker of the deployment runs the new job.
func TestKilledWorkerIsReplaced(t *testing.T) {
	t.Parallel()
	s := server(t)
	room, agentName := uniq("killed"), uniq("bot")
	g := newGuard(t, s.srv, guard.Options{})
	route(t, room, g.wh)
	workers := []*child{startChild(t, s, agentName, "staging"), startChild(t, s, agentName, "staging")}
	for _, c := range workers {
		wait.Until(t, 60*time.Second, "worker registration", func() bool { _, ok := c.line("registered"); return ok })
	}
	lkserver.AwaitRouting()
	s.join(t, room)
	s.createDispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agentName, Deployment: "staging"})

	var victim, other *child
	var identity string
	wait.Until(t, 30*time.Second, "job in a worker process", func() bool {
		for i, c := range workers {
			if l, ok := c.line("job " + room + " "); ok {
				victim, other, identity = c, workers[1-i], strings.Fields(l)[2]
				return true
			}
		}
		return false
	})
	// Fully connected (ACTIVE): killed before that, while it still connects,
	// the agent is reported after ~5 s as SIGNAL_CLOSE instead.
	wait.Until(t, 30*time.Second, "agent active in the room", func() bool {
		p, err := s.rooms.GetParticipant(context.Background(), &livekit.RoomParticipantIdentity{Room: room, Identity: identity})
		return err == nil && p.State == livekit.ParticipantInfo_ACTIVE
	})

	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var restartedAfter, joinedAfter time.Duration
	var replacement string
	wait.Until(t, 60*time.Second, "replacement agent in the room", func() bool {
		if restartedAfter == 0 && g.metric(t, "lkagent_restarts_total", "agent_name", agentName) == 1 {
			restartedAfter = time.Since(killed)
		}
		for _, id := range s.agents(t, room) {
			if id != identity {
				replacement = id
				joinedAfter = time.Since(killed)
				return true
			}
		}
		return false
	})
	t.Logf("SIGKILL of the worker -> restart decided after %s -> replacement agent %s in the room after %s",
		restartedAfter.Round(10*time.Millisecond), replacement, joinedAfter.Round(10*time.Millisecond))
	if joinedAfter > 40*time.Second {
		t.Errorf("the replacement joined %s after the kill, want within 40s", joinedAfter)
	}
	wait.Until(t, 10*time.Second, "the new job in the other worker", func() bool {
		l, ok := other.line("job " + room + " ")
		return ok && strings.Contains(l, replacement)
	})
	t.Log(g.line(t, "agent restarted", "disconnect_reason=CONNECTION_TIMEOUT", "identity="+identity))
	var ours []*livekit.AgentDispatch
	for _, d := range s.dispatches(t, room) {
		if d.AgentName == agentName {
			ours = append(ours, d)
		}
	}
	if len(ours) != 1 || ours[0].Deployment != "staging" || ours[0].Attributes[guard.AttrRestarts] != "1" {
		t.Errorf("dispatches after: %v, want the replacement only", ours)
	}
}

// What is never restarted: a job that ended normally, a JRP_NEVER
// dispatch, a room whose caller left, a deleted room, a job the server
// terminated (its dispatch deleted). Each decision is logged and counted;
// after it, nothing more happens for a while.
func TestNoRestart(t *testing.T) {
	t.Parallel()
	const observe = 3 * time.Second
	cases := []struct {
		name     string
		b        behavior
		policy   livekit.JobRestartPolicy
		after    func(t *testing.T, s *lk, room string, caller *lksdk.Room, d *livekit.AgentDispatch) // once the agent is in the room
		reason   string
		roomGone bool
	}{
		{name: "normal end", b: leave, reason: "not_failure"},
		{name: "policy never", b: die, policy: livekit.JobRestartPolicy_JRP_NEVER, reason: "policy_never"},
		{name: "caller left", b: dieWhenAlone, reason: "room_empty",
			after: func(t *testing.T, _ *lk, _ string, caller *lksdk.Room, _ *livekit.AgentDispatch) { caller.Disconnect() }},
		{name: "room deleted", b: stay, reason: "not_failure", roomGone: true,
			after: func(t *testing.T, s *lk, room string, _ *lksdk.Room, _ *livekit.AgentDispatch) {
				if _, err := s.rooms.DeleteRoom(context.Background(), &livekit.DeleteRoomRequest{Room: room}); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "job terminated by the server", b: stay, reason: "not_failure",
			after: func(t *testing.T, s *lk, room string, _ *lksdk.Room, d *livekit.AgentDispatch) {
				if _, err := s.dispatch.DeleteDispatch(context.Background(), &livekit.DeleteAgentDispatchRequest{Room: room, DispatchId: d.Id}); err != nil {
					t.Fatal(err)
				}
			}},
	}
	concurrently(t, len(cases), func(i int) (string, func(t *testing.T)) {
		tc := cases[i]
		return tc.name, func(t *testing.T) {
			s := server(t)
			room := uniq("no-restart")
			g := newGuard(t, s.srv, guard.Options{})
			route(t, room, g.wh)
			a := startAgent(t, s, "", tc.b)
			caller := s.join(t, room)
			d := s.createDispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: a.name, RestartPolicy: tc.policy})
			wait.Until(t, 30*time.Second, "the job", func() bool { return len(a.jobs(room)) == 1 })
			if tc.after != nil {
				wait.Until(t, 30*time.Second, "agent in the room", func() bool { return len(s.agents(t, room)) == 1 })
				tc.after(t, s, room, caller, d)
			}
			wait.Until(t, 30*time.Second, "the "+tc.reason+" refusal counted", func() bool {
				return g.metric(t, "lkagent_restart_refusals_total", "agent_name", a.name, "reason", tc.reason) >= 1
			})
			if n := g.metric(t, "lkagent_restart_refusals_total", "agent_name", a.name, "reason", tc.reason); n != 1 {
				t.Errorf("%s refusals = %v, want 1", tc.reason, n)
			}
			wait.Holds(t, observe, "no restart", func() bool {
				return g.metric(t, "lkagent_restarts_total", "agent_name", a.name) == 0 && len(a.jobs(room)) <= 1
			})
			t.Logf("decided: %s", g.line(t, "restart refused", "reason="+tc.reason, "agent_name="+a.name))
			if n := g.metric(t, "lkagent_restarts_total", "agent_name", a.name); n != 0 {
				t.Errorf("restarts = %v", n)
			}
			if n := len(a.jobs(room)); n != 1 {
				t.Errorf("%d jobs ran, want 1", n)
			}
			if tc.roomGone {
				return
			}
			for _, x := range s.dispatches(t, room) {
				if x.AgentName == a.name && x.Id != d.Id {
					t.Errorf("a new dispatch appeared: %v", x)
				}
			}
		}
	})

	// A failure reported for a room that no longer exists.
	t.Run("room gone", func(t *testing.T) {
		s := server(t)
		g := newGuard(t, s.srv, guard.Options{})
		d, err := g.r.Restart(context.Background(), guard.Failure{Room: uniq("never-existed"), AgentName: "bot", Identity: "agent-x", Reason: "CONNECTION_TIMEOUT"})
		if err != nil || d.Outcome != guard.RoomGone {
			t.Fatalf("%+v, %v; want room_gone", d, err)
		}
	})
}

// One failure delivered three times, to two guards (separate Restarters,
// as in separate processes) at once: one restart.
func TestSameWebhookTwiceRestartsOnce(t *testing.T) {
	t.Parallel()
	s := server(t)
	room := uniq("twice")
	ga, gb := newGuard(t, s.srv, guard.Options{}), newGuard(t, s.srv, guard.Options{})
	var once sync.Once
	route(t, room, http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if !strings.Contains(string(body), `"kind":"AGENT"`) || !strings.Contains(string(body), "AGENT_ERROR") {
			return
		}
		once.Do(func() {
			var wg sync.WaitGroup
			for _, h := range []http.Handler{ga.wh, ga.wh, gb.wh} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := httptest.NewRequest(req.Method, req.URL.Path, bytes.NewReader(body))
					r.Header = req.Header.Clone()
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, r)
					if rec.Code != http.StatusOK {
						t.Errorf("delivery: %d", rec.Code)
					}
				}()
			}
			wg.Wait()
		})
	}))
	a := startAgent(t, s, "", dieOnce)
	s.join(t, room)
	s.createDispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: a.name})
	wait.Until(t, 30*time.Second, "the restarted job", func() bool { return len(a.jobs(room)) == 2 })
	wait.Until(t, 30*time.Second, "the duplicate delivery counted", func() bool {
		return ga.metric(t, "lkagent_guard_webhooks_total", "result", "duplicate") >= 1
	})
	wait.Until(t, 30*time.Second, "the second guard's decision counted", func() bool {
		return gb.metric(t, "lkagent_restarts_total", "agent_name", a.name)+gb.metric(t, "lkagent_restart_refusals_total", "agent_name", a.name)+
			gb.metric(t, "lkagent_restart_errors_total", "agent_name", a.name) >= 1
	})
	wait.Holds(t, 2*time.Second, "one restart and 2 jobs at most", func() bool {
		return ga.metric(t, "lkagent_restarts_total", "agent_name", a.name)+gb.metric(t, "lkagent_restarts_total", "agent_name", a.name) <= 1 &&
			len(a.jobs(room)) <= 2
	})
	ga.line(t, "webhook received again")
	gb.line(t, "agent_name="+a.name, "msg=")
	total := ga.metric(t, "lkagent_restarts_total", "agent_name", a.name) + gb.metric(t, "lkagent_restarts_total", "agent_name", a.name)
	if total != 1 {
		t.Errorf("restarts: %v, want 1", total)
	}
	if n := len(a.jobs(room)); n != 2 {
		t.Errorf("%d jobs ran, want 2", n)
	}
	if n := ga.metric(t, "lkagent_guard_webhooks_total", "result", "duplicate"); n != 1 {
		t.Errorf("guard A counted %v duplicates, want 1", n)
	}
	for _, g := range []*testGuard{ga, gb} {
		for _, l := range strings.Split(strings.TrimSpace(g.log.String()), "\n") {
			t.Log(l)
		}
	}
}

// A worker and a guard (two Restarters) given one failure at the same
// time: one restart. Three rooms, each its own race.
func TestConcurrentRestartersOnRealServer(t *testing.T) {
	t.Parallel()
	s := server(t)
	a := startAgent(t, s, "canary", dieOnce)
	g1, g2 := newGuard(t, s.srv, guard.Options{}), newGuard(t, s.srv, guard.Options{})
	concurrently(t, 3, func(i int) (string, func(t *testing.T)) {
		return fmt.Sprint(i), func(t *testing.T) {
			room := uniq("race") // no webhook route: only the two Restarters act
			s.join(t, room)
			d := s.createDispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: a.name, Deployment: "canary"})
			wait.Until(t, 30*time.Second, "the job", func() bool { return len(a.jobs(room)) == 1 })
			first := a.jobs(room)[0]
			wait.Until(t, 30*time.Second, "the agent gone", func() bool { return len(s.agents(t, room)) == 0 })
			failures := []guard.Failure{
				// as the worker knows it
				{Room: room, AgentName: a.name, Deployment: "canary", Identity: first.identity, JobID: first.jobID, DispatchID: d.Id, Reason: "AGENT_ERROR"},
				// as a webhook tells it
				{Room: room, AgentName: a.name, Identity: first.identity, Reason: "AGENT_ERROR"},
			}
			var wg sync.WaitGroup
			decisions := make([]guard.Decision, 2)
			for j, g := range []*testGuard{g1, g2} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var err error
					if decisions[j], err = g.r.Restart(context.Background(), failures[j]); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			restarted := 0
			for _, d := range decisions {
				switch d.Outcome {
				case guard.Restarted:
					restarted++
				case guard.AlreadyHandled:
				default:
					t.Errorf("decision %+v", d)
				}
			}
			if restarted != 1 {
				t.Fatalf("%d restarts, want 1: %+v", restarted, decisions)
			}
			wait.Until(t, 30*time.Second, "the restarted job", func() bool { return len(a.jobs(room)) == 2 })
			t.Logf("decisions: %s, %s (%s)", decisions[0].Outcome, decisions[1].Outcome, decisions[1].Detail)
		}
	})
}

// Webhooks that are not signed with the server's key are refused with 401
// and change nothing; the same event, signed, restarts the agent.
func TestForgedWebhooksChangeNothing(t *testing.T) {
	t.Parallel()
	s := server(t)
	room := uniq("forged") // the server's own webhooks for it go nowhere
	g := newGuard(t, s.srv, guard.Options{})
	hs := httptest.NewServer(g.wh)
	defer hs.Close()
	a := startAgent(t, s, "", stay)
	s.join(t, room)
	d := s.createDispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: a.name})
	wait.Until(t, 30*time.Second, "the job", func() bool { return len(a.jobs(room)) == 1 })
	identity := a.jobs(room)[0].identity
	wait.Until(t, 30*time.Second, "agent in the room", func() bool { return len(s.agents(t, room)) == 1 })
	wait.Until(t, 30*time.Second, "the job listed", func() bool {
		ds := s.dispatches(t, room)
		return slices.ContainsFunc(ds, func(x *livekit.AgentDispatch) bool { return x.Id == d.Id && len(x.State.Jobs) == 1 })
	})

	body, err := protojson.Marshal(&livekit.WebhookEvent{Id: "EV_forged", Event: "participant_left", Room: &livekit.Room{Name: room},
		Participant: &livekit.ParticipantInfo{Identity: identity, Kind: livekit.ParticipantInfo_AGENT, JoinedAtMs: time.Now().UnixMilli(),
			Attributes: map[string]string{"lk.agent_name": a.name}, DisconnectReason: livekit.DisconnectReason_CONNECTION_TIMEOUT}})
	if err != nil {
		t.Fatal(err)
	}
	token := func(key, secret string, over []byte) string {
		sum := sha256.Sum256(over)
		tok, err := auth.NewAccessToken(key, secret).SetValidFor(time.Minute).SetSha256(base64.StdEncoding.EncodeToString(sum[:])).ToJWT()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	post := func(auth string) int {
		req, _ := http.NewRequest(http.MethodPost, hs.URL+guard.WebhookPath, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/webhook+json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	for name, auth := range map[string]string{
		"unsigned":           "",
		"wrong secret":       token(s.srv.APIKey(), "not-the-secret-not-the-secret-not-the", body),
		"unknown key":        token("other-key", s.srv.APISecret(), body),
		"signature of other": token(s.srv.APIKey(), s.srv.APISecret(), []byte("another body")),
		"not a token":        "Bearer abc",
	} {
		if code := post(auth); code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", name, code)
		}
	}
	wait.Until(t, 10*time.Second, "the forged webhooks counted", func() bool {
		return g.metric(t, "lkagent_guard_webhooks_total", "result", "unauthorized") >= 5
	})
	wait.Holds(t, time.Second, "no restart decision", func() bool {
		return g.metric(t, "lkagent_restart_refusals_total", "agent_name", a.name)+g.metric(t, "lkagent_restarts_total", "agent_name", a.name) == 0
	})
	if n := g.metric(t, "lkagent_guard_webhooks_total", "result", "unauthorized"); n != 5 {
		t.Errorf("unauthorized = %v, want 5", n)
	}
	if n := g.metric(t, "lkagent_restart_refusals_total", "agent_name", a.name) + g.metric(t, "lkagent_restarts_total", "agent_name", a.name); n != 0 {
		t.Errorf("forged webhooks reached the restarter (%v decisions)", n)
	}
	if !slices.Contains(s.agents(t, room), identity) || !slices.ContainsFunc(s.dispatches(t, room), func(x *livekit.AgentDispatch) bool { return x.Id == d.Id }) {
		t.Fatal("a forged webhook changed the room")
	}
	if strings.Contains(g.log.String(), s.srv.APISecret()) {
		t.Error("the log shows the API secret")
	}

	// The control: signed by the server's key, the same event restarts.
	if code := post(token(s.srv.APIKey(), s.srv.APISecret(), body)); code != http.StatusOK {
		t.Fatalf("signed: %d, want 200", code)
	}
	wait.Until(t, 30*time.Second, "the restart counted", func() bool {
		return g.metric(t, "lkagent_restarts_total", "agent_name", a.name) >= 1
	})
	wait.Until(t, 30*time.Second, "the restarted job", func() bool { return len(a.jobs(room)) == 2 })
	g.line(t, "agent restarted", "identity="+identity)
}
