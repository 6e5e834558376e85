//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/lkagent/lkagent/guard"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/wait"
)

// Restarts against the real server with its webhooks on: a killed worker's
// agent replaced by another worker (served on the workers' own endpoints,
// or by lkagent guard), a crashed job process replaced by its worker at
// once, what is never restarted, the cap, duplicates and forged webhooks.
// The groups run at once: they mostly wait on the server.
func TestRestartOnFailure(t *testing.T) {
	t.Parallel()
	bins := buildRestartBinaries(t)
	shared := newHookServer(t)
	runConcurrently(t, map[string]func(t *testing.T){
		"killed worker, webhooks served by the workers": func(t *testing.T) { testKilledWorkerWebhooks(t, bins) },
		"killed worker, lkagent guard":                  func(t *testing.T) { testKilledWorkerGuard(t, bins) },
		"crashed job process":                           func(t *testing.T) { testCrashedJobProcess(t, bins, shared) },
		"never restarted":                               func(t *testing.T) { testNeverRestarted(t, bins, shared) },
		"always crashing agent is capped":               func(t *testing.T) { testAlwaysCrashingCapped(t, bins, shared) },
		"forged webhooks are refused":                   func(t *testing.T) { testForgedWebhooks(t, bins, shared) },
	})
}

// restartJobProcs enables TestKilledWorkersJobProcessesDoNotLeaveNormally.
var restartJobProcs = flag.Int("restart.jobprocs", 4, "workers TestKilledWorkersJobProcessesDoNotLeaveNormally kills (more load, more chance to catch the race)")

// Workers whose jobs run in processes of their own are SIGKILLed right
// after their agents joined: each job process dies with its worker, and
// the server must see the agent fail (CONNECTION_TIMEOUT, SIGNAL_CLOSE),
// never leave normally, or no webhook receiver restarts it. Seen failing
// on a loaded machine (3 agents in 18): the job process noticed the channel
// to its worker close before the kernel killed it, cancelled its job, and
// its agent left the room with CLIENT_INITIATED. A job process now exits
// without leaving when its worker goes away. -restart.jobprocs=16 loads
// the machine more.
func TestKilledWorkersJobProcessesDoNotLeaveNormally(t *testing.T) {
	t.Parallel()
	workers := *restartJobProcs
	bins := buildRestartBinaries(t)
	hs := newHookServer(t)
	runConcurrently(t, func() map[string]func(t *testing.T) {
		m := map[string]func(t *testing.T){}
		for i := range workers {
			m[fmt.Sprint(i)] = func(t *testing.T) {
				agentName, room := uniq("jobprocs"), uniq("room")
				w := startAgentProc(t, bins.agent, hs.srv, "--agent-name", agentName, "--processes", "--http-addr", freeLoopbackAddr(t))
				w.waitRegistered(t)
				lkserver.AwaitRouting()
				joinCaller(t, hs.srv, room, "caller")
				hs.api.dispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agentName, Metadata: "hold"})
				first := lineFields(w.out.waitLine(t, 30*time.Second, "job ", "room="+room+" "))
				wait.Until(t, 30*time.Second, "the agent active in the room", func() bool {
					p, ok := hs.api.participant(t, room, first["identity"])
					return ok && p.State == livekit.ParticipantInfo_ACTIVE
				})
				w.kill(t)
				left := hs.router.wait(t, 40*time.Second, "the agent's departure", func(ev *livekit.WebhookEvent) bool {
					return ev.Participant.GetIdentity() == first["identity"] &&
						(ev.Event == "participant_left" || ev.Event == "participant_connection_aborted")
				})
				if reason := left.ev.Participant.GetDisconnectReason().String(); !guard.IsFailure(reason) {
					t.Errorf("the killed worker's agent left with %s (%s): no webhook receiver restarts it", reason, left.ev.Event)
				}
			}
		}
		return m
	}())
}

// runConcurrently runs the subtests at once and returns when all have
// ended. Unlike t.Parallel subtests they are not held to GOMAXPROCS at a
// time: they wait on the server and on timeouts, not on the CPU.
func runConcurrently(t *testing.T, subtests map[string]func(t *testing.T)) {
	var wg sync.WaitGroup
	for name, fn := range subtests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(name, fn)
		}()
	}
	wg.Wait()
}

// restartBinaries are the programs the restart tests run as processes.
type restartBinaries struct{ agent, lkagent string }

func buildRestartBinaries(t *testing.T) restartBinaries {
	t.Helper()
	dir := t.TempDir()
	b := restartBinaries{agent: filepath.Join(dir, "restartagent"), lkagent: filepath.Join(dir, "lkagent")}
	for bin, pkg := range map[string]string{
		b.agent:   "github.com/lkagent/lkagent/internal/e2e/restartagent",
		b.lkagent: "github.com/lkagent/lkagent/cmd/lkagent",
	} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	return b
}

// A worker process is SIGKILLed while its agent serves a caller. Both
// workers serve LiveKit's webhooks on their own HTTP endpoints and the
// server posts to both; ~20 s after the kill the server reports the agent
// gone (CONNECTION_TIMEOUT), the surviving worker restarts it and runs the
// new job itself. The same webhook, delivered again, changes nothing.
func testKilledWorkerWebhooks(t *testing.T, bins restartBinaries) {
	addrs := []string{freeLoopbackAddr(t), freeLoopbackAddr(t)}
	capture := newHookRouter(t)
	s := lkserver.StartTB(t, lkserver.Options{WebhookURLs: []string{
		"http://" + addrs[0] + guard.WebhookPath, "http://" + addrs[1] + guard.WebhookPath, capture.url,
	}})
	agentName, room := uniq("killed"), uniq("room")
	var workers []*agentProc
	for _, addr := range addrs {
		workers = append(workers, startAgentProc(t, bins.agent, s, "--agent-name", agentName, "--deployment", "staging",
			"--webhook", "--http-addr", addr))
	}
	survivor, left := killAndReplace(t, s, workers, capture, agentName, room, "the workers")
	restartedOnce(t, survivor, left, agentName, room)
}

// The same with lkagent guard as the webhook receiver.
func testKilledWorkerGuard(t *testing.T, bins restartBinaries) {
	addr := freeLoopbackAddr(t)
	capture := newHookRouter(t)
	s := lkserver.StartTB(t, lkserver.Options{WebhookURLs: []string{"http://" + addr + guard.WebhookPath, capture.url}})
	g := startProc(t, "lkagent guard", exec.Command(bins.lkagent, "guard", "--listen", addr), s)
	wait.Until(t, 30*time.Second, "lkagent guard serving", func() bool { return httpOK("http://" + addr + "/metrics") })
	agentName, room := uniq("killed"), uniq("room")
	var workers []*agentProc
	for range 2 {
		workers = append(workers, startAgentProc(t, bins.agent, s, "--agent-name", agentName, "--deployment", "staging",
			"--http-addr", freeLoopbackAddr(t)))
	}
	g.base = "http://" + addr
	g.log = g.out // the guard logs to stdout
	_, left := killAndReplace(t, s, workers, capture, agentName, room, "lkagent guard")
	restartedOnce(t, g, left, agentName, room)
	g.out.line(t, `msg="guard listening"`)
}

// killAndReplace runs a call in room on one of two registered workers of
// agentName (deployment staging), SIGKILLs that worker once its agent is
// in the room, and checks the other runs the replacement within 40 s. It
// returns the surviving worker and the webhook telling the agent left;
// receiver names who receives the webhooks, for the log.
func killAndReplace(t *testing.T, s *lkserver.Server, workers []*agentProc, capture *hookRouter, agentName, room, receiver string) (*agentProc, capturedHook) {
	t.Helper()
	for _, w := range workers {
		w.waitRegistered(t)
	}
	lkserver.AwaitRouting()
	api := newServerAPI(s)
	joinCaller(t, s, room, "caller")
	api.dispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agentName, Deployment: "staging", Metadata: "hold"})

	var victim, other *agentProc
	var first map[string]string
	wait.Until(t, 30*time.Second, "the job in a worker", func() bool {
		for i, w := range workers {
			if l, ok := w.out.lineWith("job ", "room="+room+" "); ok {
				victim, other, first = w, workers[1-i], lineFields(l)
				return true
			}
		}
		return false
	})
	// Fully connected: killed while still connecting, the agent would be
	// reported after ~5 s as SIGNAL_CLOSE instead.
	wait.Until(t, 30*time.Second, "the agent active in the room", func() bool {
		p, ok := api.participant(t, room, first["identity"])
		return ok && p.State == livekit.ParticipantInfo_ACTIVE
	})

	victim.kill(t)
	killed := time.Now()
	var joined time.Duration
	var replacement string
	wait.Until(t, 60*time.Second, "a replacement agent in the room", func() bool {
		for _, p := range api.participants(t, room) {
			if p.Kind == livekit.ParticipantInfo_AGENT && p.Identity != first["identity"] {
				joined, replacement = time.Since(killed), p.Identity
				return true
			}
		}
		return false
	})
	left := capture.wait(t, 10*time.Second, "the killed agent's participant_left", func(ev *livekit.WebhookEvent) bool {
		return ev.Event == "participant_left" && ev.Participant.GetIdentity() == first["identity"]
	})
	t.Logf("webhooks to %s: SIGKILL of the worker running the call -> participant_left %s after %s -> replacement agent %s in the room after %s",
		receiver, left.ev.Participant.GetDisconnectReason(), left.at.Sub(killed).Round(10*time.Millisecond), replacement, joined.Round(10*time.Millisecond))
	if joined > 40*time.Second {
		t.Errorf("the replacement joined %s after the kill, want within 40s", joined)
	}
	next := lineFields(other.out.waitLine(t, 10*time.Second, "job ", "identity="+replacement))
	if next["room"] != room || next["restarts"] != "1" {
		t.Errorf("the surviving worker's job: %v, want room %s, restarts 1", next, room)
	}
	var ours []*livekit.AgentDispatch
	for _, d := range api.dispatches(t, room) {
		if d.AgentName == agentName {
			ours = append(ours, d)
		}
	}
	if len(ours) != 1 || ours[0].Deployment != "staging" || ours[0].Metadata != "hold" || ours[0].Attributes[guard.AttrRestarts] != "1" {
		t.Errorf("dispatches after the restart: %v, want the replacement only (staging, hold, restarts 1)", ours)
	}
	if left.ev.Participant.GetDisconnectReason() != livekit.DisconnectReason_CONNECTION_TIMEOUT {
		t.Errorf("the killed agent left with %s, want CONNECTION_TIMEOUT", left.ev.Participant.GetDisconnectReason())
	}
	return other, left
}

// restartedOnce checks the webhook receiver restarted the agent of left,
// once, and takes the same webhook delivered twice more (the server's own
// signed body) as duplicates that change nothing.
func restartedOnce(t *testing.T, receiver *agentProc, left capturedHook, agentName, room string) {
	t.Helper()
	wait.Until(t, 10*time.Second, receiver.name+"'s restart counted", func() bool {
		return receiver.metric(t, "lkagent_restarts_total", "agent_name", agentName, "deployment", "staging") >= 1
	})
	before := receiver.metric(t, "lkagent_guard_webhooks_total", "result", "duplicate")
	for range 2 {
		if code := receiver.post(t, left.header, left.body); code != http.StatusOK {
			t.Errorf("the webhook delivered again: %d, want 200", code)
		}
	}
	wait.Until(t, 10*time.Second, "2 duplicate webhooks counted", func() bool {
		return receiver.metric(t, "lkagent_guard_webhooks_total", "result", "duplicate")-before >= 2
	})
	wait.Holds(t, time.Second, "one restart", func() bool {
		return receiver.metric(t, "lkagent_restarts_total", "agent_name", agentName, "deployment", "staging") <= 1
	})
	if n := receiver.metric(t, "lkagent_guard_webhooks_total", "result", "duplicate") - before; n != 2 {
		t.Errorf("%s counted %v duplicate webhooks, want 2", receiver.name, n)
	}
	if n := receiver.metric(t, "lkagent_restarts_total", "agent_name", agentName, "deployment", "staging"); n != 1 {
		t.Errorf("%s counted %v restarts, want 1", receiver.name, n)
	}
	t.Log(receiver.log.line(t, `msg="agent restarted"`, "room="+room, "disconnect_reason=CONNECTION_TIMEOUT"))
}

// In process mode, a job process that crashes (os.Exit, or a
// fatal runtime error) ends only its job; the worker dispatches the agent
// again at once and the new job is in the room within 5 s. Webhook
// receivers that see the same failure (the worker's own, a second worker's,
// the same webhooks delivered again) restart nothing more.
func testCrashedJobProcess(t *testing.T, bins restartBinaries, hs *hookServer) {
	agentName := uniq("crashy")
	w := startAgentProc(t, bins.agent, hs.srv, "--agent-name", agentName, "--processes", "--webhook", "--http-addr", freeLoopbackAddr(t))
	// A second receiver, as a second worker (or lkagent guard) would be.
	w2 := startAgentProc(t, bins.agent, hs.srv, "--agent-name", uniq("bystander"), "--webhook", "--http-addr", freeLoopbackAddr(t))
	w.waitRegistered(t)
	registered := time.Now()
	w2.waitRegistered(t)
	lkserver.AwaitRouting()
	pid := w.cmd.Process.Pid

	// Right after a worker registered, the server lists a job in its
	// dispatch only once it has refreshed its agent names, up to ~5 s
	// later; the worker's restart of a job that failed before that waits
	// for the listing (at most 15 s), as it must find the failed dispatch.
	t.Run("os.Exit on joining, right after the worker registered", func(t *testing.T) {
		crashAndRestart(t, hs, w, w2, agentName, "crash-once:exit", 15*time.Second)
	})
	// Later, as for workers that registered before their calls came.
	time.Sleep(time.Until(registered.Add(8 * time.Second)))
	variants := map[string]string{
		"os.Exit on joining":               "crash-once:exit",
		"concurrent map writes on joining": "crash-once:map",
		"os.Exit mid-call":                 "crash-once:exit:3s",
	}
	runConcurrently(t, func() map[string]func(t *testing.T) {
		m := map[string]func(t *testing.T){}
		for name, behaviour := range variants {
			m[name] = func(t *testing.T) { crashAndRestart(t, hs, w, w2, agentName, behaviour, 5*time.Second) }
		}
		return m
	}())
	if l, ok := w.out.lineWith("registered"); !ok || lineFields(l)["pid"] != strconv.Itoa(pid) || len(w.out.matching("registered")) != 1 || !pidAlive(pid) {
		t.Errorf("the worker did not live on through its jobs' crashes:\n%s", w.out)
	}
	if n := w.metric(t, "lkagent_restarts_total", "agent_name", agentName); n != float64(len(variants)+1) {
		t.Errorf("the worker counted %v restarts, want %d (one per room)", n, len(variants)+1)
	}
	if n := w2.metric(t, "lkagent_restarts_total", "agent_name", agentName); n != 0 {
		t.Errorf("the second receiver counted %v restarts, want 0", n)
	}
}

// crashAndRestart dispatches behaviour (a crash-once) to a room of its own
// and checks the worker restarts the agent, the new one being in the room
// within bound of the crash, and only once whoever sees the failure.
func crashAndRestart(t *testing.T, hs *hookServer, w, w2 *agentProc, agentName, behaviour string, bound time.Duration) {
	room := uniq("room")
	hs.router.route(t, room, w.base+guard.WebhookPath)
	joinCaller(t, hs.srv, room, "caller")
	hs.api.dispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agentName, Metadata: behaviour})

	crash := lineFields(w.out.waitLine(t, 30*time.Second, "crash ", "room="+room+" "))
	crashed := time.Unix(0, mustInt64(t, crash["at"]))
	var inRoom time.Duration
	var replacement string
	wait.Until(t, 30*time.Second, "a replacement agent in the room", func() bool {
		for _, p := range hs.api.participants(t, room) {
			if p.Kind == livekit.ParticipantInfo_AGENT && p.Identity != crash["identity"] && p.State == livekit.ParticipantInfo_ACTIVE {
				inRoom, replacement = time.Since(crashed), p.Identity
				return true
			}
		}
		return false
	})
	next := lineFields(w.out.waitLine(t, 10*time.Second, "job ", "identity="+replacement))
	joined := time.Unix(0, mustInt64(t, next["at"])).Sub(crashed)
	t.Logf("%s: job process %s crashed -> new job joined the room after %s (its handler's clock), seen active by the server after %s",
		behaviour, crash["pid"], joined.Round(time.Millisecond), inRoom.Round(time.Millisecond))
	if inRoom > bound {
		t.Errorf("the new agent was in the room %s after the crash, want within %s", inRoom, bound)
	}
	if next["restarts"] != "1" || next["pid"] == crash["pid"] {
		t.Errorf("the new job: %v, want restarts 1 in another process", next)
	}
	t.Log(w.log.line(t, "job process ended without finishing its job", "room="+room))
	if l, ok := w.log.lineWith("no job listed yet", "room="+room); ok {
		t.Logf("the restart waited for the server to list the job: %s", l)
	}

	// The worker decides about its failed job (source=call), and its
	// webhook receiver about the agent's departure as the server reports
	// it; whichever comes first restarts, the other finds it handled (or
	// the departure is no failure: the restart removed the agent).
	left := hs.router.wait(t, 30*time.Second, "the crashed agent's departure webhook", func(ev *livekit.WebhookEvent) bool {
		return ev.Participant.GetIdentity() == crash["identity"] &&
			(ev.Event == "participant_left" || ev.Event == "participant_connection_aborted")
	})
	reason := left.ev.Participant.GetDisconnectReason().String()
	t.Logf("webhook %s %s %s after the crash", left.ev.Event, reason, left.at.Sub(crashed).Round(time.Millisecond))
	byCall := w.log.waitLine(t, 30*time.Second, "source=call", "identity="+crash["identity"])
	byHook := w.log.waitLine(t, 30*time.Second, "source=webhook:", "identity="+crash["identity"])
	restarted := w.log.matching(`msg="agent restarted"`, "room="+room)
	if len(restarted) != 1 {
		t.Fatalf("%d restarts in the room, want 1:\n%s", len(restarted), strings.Join(restarted, "\n"))
	}
	t.Log(restarted[0])
	switch restarted[0] {
	case byCall:
		want := "not_failure"
		if guard.IsFailure(reason) {
			want = "already_handled"
		}
		if got := lineFields(byHook)["reason"]; got != want {
			t.Errorf("the webhook receiver's decision: %s, want %s: %s", got, want, byHook)
		}
	case byHook:
		if got := lineFields(byCall)["reason"]; got != "already_handled" {
			t.Errorf("the worker's decision: %s, want already_handled: %s", got, byCall)
		}
	default:
		t.Errorf("restarted by neither the worker nor its webhook receiver: %s", restarted[0])
	}

	// The same webhooks again, at once: to the worker (which got them
	// from the server) and to another receiver that never saw them.
	var wg sync.WaitGroup
	for _, h := range hs.router.all(room) {
		for _, to := range []*agentProc{w, w, w2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if code := to.post(t, h.header, h.body); code != http.StatusOK {
					t.Errorf("%s delivered again: %d", h.ev.Event, code)
				}
			}()
		}
	}
	wg.Wait()
	wait.Until(t, 30*time.Second, "the bystander's refusal counted", func() bool {
		return w2.metric(t, "lkagent_restart_refusals_total", "agent_name", agentName) >= 1
	})
	wait.Holds(t, 3*time.Second, "at most 2 jobs in the room", func() bool {
		return len(w.out.matching("job ", "room="+room+" ")) <= 2
	})
	t.Log(w2.log.line(t, `msg="restart refused"`, "identity="+crash["identity"]))
	if n := len(w.out.matching("job ", "room="+room+" ")); n != 2 {
		t.Errorf("%d jobs ran in the room, want 2", n)
	}
	var ours []*livekit.AgentDispatch
	for _, d := range hs.api.dispatches(t, room) {
		if d.AgentName == agentName {
			ours = append(ours, d)
		}
	}
	if len(ours) != 1 || ours[0].Attributes[guard.AttrRestarts] != "1" {
		t.Errorf("dispatches after: %v, want the replacement only", ours)
	}
}

// A job that ends normally, a JRP_NEVER dispatch whose job
// crashes, and a crash after the caller left are not restarted. Every
// decision about the agent (the worker's own when its job process dies,
// and its webhook receiver's about the agent's departure) is logged and
// counted as a refusal with its reason; a refusal is final, so after the
// last one the test watches restartObserve for a restart that must not
// come.
func testNeverRestarted(t *testing.T, bins restartBinaries, hs *hookServer) {
	agentName := uniq("never")
	w := startAgentProc(t, bins.agent, hs.srv, "--agent-name", agentName, "--processes", "--webhook", "--http-addr", freeLoopbackAddr(t))
	w.waitRegistered(t)
	lkserver.AwaitRouting()

	cases := map[string]struct {
		behaviour string
		policy    livekit.JobRestartPolicy
		leave     bool   // the caller leaves once the agent is in
		worker    string // the worker's refusal of the crash; "" when nothing failed
		webhook   string // the webhook receiver's refusal of a departure that was a failure
	}{
		"normal end":  {behaviour: "leave"},
		"JRP_NEVER":   {behaviour: "crash:exit", policy: livekit.JobRestartPolicy_JRP_NEVER, worker: "policy_never", webhook: "policy_never"},
		"caller left": {behaviour: "crash-alone:exit", leave: true, worker: "room_empty", webhook: "room_empty"},
	}
	runConcurrently(t, func() map[string]func(t *testing.T) {
		m := map[string]func(t *testing.T){}
		for name, tc := range cases {
			m[name] = func(t *testing.T) {
				room := uniq("room")
				hs.router.route(t, room, w.base+guard.WebhookPath)
				caller := joinCaller(t, hs.srv, room, "caller")
				d := hs.api.dispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agentName, Metadata: tc.behaviour, RestartPolicy: tc.policy})
				if d.RestartPolicy != tc.policy {
					t.Errorf("the dispatch's policy is %s, want %s", d.RestartPolicy, tc.policy)
				}
				first := lineFields(w.out.waitLine(t, 30*time.Second, "job ", "room="+room+" "))
				if tc.leave {
					caller.Disconnect()
				}
				if tc.worker != "" {
					t.Log(w.log.waitLine(t, 30*time.Second, `msg="restart refused"`, "source=call", "reason="+tc.worker, "identity="+first["identity"]))
				}
				// The agent's departure as the webhooks tell it, and the
				// receiver's decision about it.
				left := hs.router.wait(t, 60*time.Second, "the agent's departure webhook", func(ev *livekit.WebhookEvent) bool {
					return ev.Participant.GetIdentity() == first["identity"] &&
						(ev.Event == "participant_left" || ev.Event == "participant_connection_aborted")
				})
				reason := left.ev.Participant.GetDisconnectReason().String()
				line := w.log.waitLine(t, 30*time.Second, `msg="restart refused"`, "source=webhook:", "identity="+first["identity"])
				decided := time.Now()
				t.Logf("webhook %s %s: %s", left.ev.Event, reason, line)
				want := "not_failure"
				if guard.IsFailure(reason) {
					want = tc.webhook
				}
				if got := lineFields(line)["reason"]; got != want {
					t.Errorf("the webhook's decision: %s, want %s", got, want)
				}

				wait.Holds(t, *restartObserve, "at most one job", func() bool {
					return len(w.out.matching("job ", "room="+room+" ")) <= 1
				})
				if n := len(w.out.matching("job ", "room="+room+" ")); n != 1 {
					t.Errorf("%d jobs ran, want 1", n)
				}
				for _, d := range hs.api.dispatches(t, room) {
					if d.Attributes[guard.AttrRestarts] != "" {
						t.Errorf("a restart was dispatched: %v", d)
					}
				}
				if l, ok := w.log.lineWith(`msg="agent restarted"`, "room="+room); ok {
					t.Errorf("restarted: %s", l)
				}
				t.Logf("no restart within %s of the last decision", time.Since(decided).Round(time.Second))
			}
		}
		return m
	}())
	if n := w.metric(t, "lkagent_restarts_total", "agent_name", agentName); n != 0 {
		t.Errorf("%v restarts, want 0", n)
	}
	for _, reason := range []string{"policy_never", "room_empty"} {
		if n := w.metric(t, "lkagent_restart_refusals_total", "agent_name", agentName, "reason", reason); n < 1 {
			t.Errorf("refusals for %s: %v, want at least 1", reason, n)
		}
	}
	if n := w.metric(t, "lkagent_restart_refusals_total", "agent_name", agentName, "deployment", guard.UnknownDeployment, "reason", "not_failure"); n < 1 {
		t.Errorf("not_failure refusals of webhooks: %v, want at least 1", n)
	}
}

// An agent that crashes every time is restarted at most the cap
// (3, the default), then refused with a log line and a count.
func testAlwaysCrashingCapped(t *testing.T, bins restartBinaries, hs *hookServer) {
	agentName := uniq("always")
	w := startAgentProc(t, bins.agent, hs.srv, "--agent-name", agentName, "--processes", "--webhook", "--http-addr", freeLoopbackAddr(t),
		"--restart-backoff", "500ms")
	w.waitRegistered(t)
	lkserver.AwaitRouting()
	room := uniq("room")
	hs.router.route(t, room, w.base+guard.WebhookPath)
	joinCaller(t, hs.srv, room, "caller")
	start := time.Now()
	hs.api.dispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agentName, Metadata: "crash:map"})

	wait.Until(t, 90*time.Second, "the cap_reached refusal counted", func() bool {
		return w.metric(t, "lkagent_restart_refusals_total", "agent_name", agentName, "reason", "cap_reached") >= 1
	})
	t.Logf("refused %s after the first dispatch", time.Since(start).Round(time.Millisecond))
	wait.Holds(t, 3*time.Second, "no restart beyond the cap", func() bool {
		return w.metric(t, "lkagent_restarts_total", "agent_name", agentName) <= 3
	})
	t.Log(w.log.line(t, `msg="restart refused"`, "reason=cap_reached", "agent_name="+agentName))
	if n := w.metric(t, "lkagent_restarts_total", "agent_name", agentName); n != 3 {
		t.Errorf("lkagent_restarts_total = %v, want 3", n)
	}
	if n := w.metric(t, "lkagent_restart_refusals_total", "agent_name", agentName, "reason", "cap_reached"); n < 1 {
		t.Errorf("cap_reached refusals = %v, want at least 1", n)
	}
	jobs := w.out.matching("job ", "room="+room+" ")
	crashes := w.out.matching("crash ", "room="+room+" ")
	if len(jobs) != 4 || len(crashes) != 4 {
		t.Fatalf("%d jobs and %d crashes, want 4 of each (the first and 3 restarts):\n%s", len(jobs), len(crashes), w.out)
	}
	for i, l := range jobs {
		if want := map[bool]string{true: "", false: strconv.Itoa(i)}[i == 0]; lineFields(l)["restarts"] != want {
			t.Errorf("job %d carries restarts %q, want %q", i, lineFields(l)["restarts"], want)
		}
	}
	for _, l := range w.log.matching(`msg="agent restarted"`, "room="+room) {
		t.Log(l)
	}
	if !w.log.find("concurrent map writes") {
		t.Error("the job processes did not crash with concurrent map writes")
	}
}

// Requests to a worker's /webhook that the server did not sign
// are refused with 401 and change nothing; the same event signed with the
// server's key restarts the agent.
func testForgedWebhooks(t *testing.T, bins restartBinaries, hs *hookServer) {
	agentName := uniq("forged")
	w := startAgentProc(t, bins.agent, hs.srv, "--agent-name", agentName, "--webhook", "--http-addr", freeLoopbackAddr(t))
	w.waitRegistered(t)
	lkserver.AwaitRouting()
	room := uniq("room") // the server's own webhooks for it go nowhere
	joinCaller(t, hs.srv, room, "caller")
	d := hs.api.dispatch(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agentName, Metadata: "hold"})
	first := lineFields(w.out.waitLine(t, 30*time.Second, "job ", "room="+room+" "))
	wait.Until(t, 30*time.Second, "the job listed in its dispatch", func() bool {
		for _, x := range hs.api.dispatches(t, room) {
			if x.Id == d.Id && len(x.GetState().GetJobs()) == 1 {
				return true
			}
		}
		return false
	})

	body, err := protojson.Marshal(&livekit.WebhookEvent{Id: uniq("EV"), Event: "participant_left", Room: &livekit.Room{Name: room},
		CreatedAt: time.Now().Unix(),
		Participant: &livekit.ParticipantInfo{Identity: first["identity"], Kind: livekit.ParticipantInfo_AGENT, JoinedAtMs: time.Now().UnixMilli(),
			Attributes: map[string]string{"lk.agent_name": agentName}, DisconnectReason: livekit.DisconnectReason_CONNECTION_TIMEOUT}})
	if err != nil {
		t.Fatal(err)
	}
	sign := func(key, secret string, over []byte) http.Header {
		sum := sha256.Sum256(over)
		tok, err := auth.NewAccessToken(key, secret).SetValidFor(time.Minute).SetSha256(base64.StdEncoding.EncodeToString(sum[:])).ToJWT()
		if err != nil {
			t.Fatal(err)
		}
		return http.Header{"Authorization": {tok}}
	}
	forged := map[string]http.Header{
		"unsigned":                   {},
		"signed with another secret": sign(hs.srv.APIKey(), "another-secret-another-secret-another-secret", body),
		"signed with an unknown key": sign("APIunknown", hs.srv.APISecret(), body),
		"signature of another body":  sign(hs.srv.APIKey(), hs.srv.APISecret(), []byte(`{"event":"room_finished"}`)),
		"not a token":                {"Authorization": {"Bearer not-a-token"}},
	}
	for name, h := range forged {
		if code := w.post(t, h, body); code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", name, code)
		}
	}
	wait.Until(t, 10*time.Second, "the forged webhooks counted", func() bool {
		return w.metric(t, "lkagent_guard_webhooks_total", "result", "unauthorized") >= float64(len(forged))
	})
	wait.Holds(t, 2*time.Second, "no restart decision", func() bool {
		return w.metric(t, "lkagent_restarts_total")+w.metric(t, "lkagent_restart_refusals_total") == 0
	})
	if n := w.metric(t, "lkagent_guard_webhooks_total", "result", "unauthorized"); n != float64(len(forged)) {
		t.Errorf("unauthorized webhooks counted: %v, want %d", n, len(forged))
	}
	if n := w.metric(t, "lkagent_restarts_total") + w.metric(t, "lkagent_restart_refusals_total"); n != 0 {
		t.Errorf("forged webhooks reached the restarter: %v decisions", n)
	}
	if p, ok := hs.api.participant(t, room, first["identity"]); !ok || p.State != livekit.ParticipantInfo_ACTIVE {
		t.Errorf("the agent is no longer active in the room after the forged webhooks: %v", p)
	}
	var ours []*livekit.AgentDispatch
	for _, x := range hs.api.dispatches(t, room) {
		if x.AgentName == agentName {
			ours = append(ours, x)
		}
	}
	if len(ours) != 1 || ours[0].Id != d.Id {
		t.Errorf("the dispatches changed: %v", ours)
	}
	if n := len(w.out.matching("job ")); n != 1 {
		t.Errorf("%d jobs ran, want 1", n)
	}
	if !w.log.find("webhook refused: not signed by the server's key") {
		t.Error("the refusals were not logged")
	}

	// The control: the same body signed with the server's key is acted on.
	if code := w.post(t, sign(hs.srv.APIKey(), hs.srv.APISecret(), body), body); code != http.StatusOK {
		t.Fatalf("signed: %d, want 200", code)
	}
	wait.Until(t, 30*time.Second, "the restart counted", func() bool {
		return w.metric(t, "lkagent_restarts_total", "agent_name", agentName) >= 1
	})
	w.out.waitLine(t, 30*time.Second, "job ", "room="+room+" ", "restarts=1")
	t.Log(w.log.line(t, `msg="agent restarted"`, "identity="+first["identity"], "source=webhook:participant_left"))
}

// restartObserve is how long the never-restarted cases watch for a restart
// after the last decision; -restart.observe=60s watches a minute.
var restartObserve = flag.Duration("restart.observe", 10*time.Second, "how long TestRestartOnFailure watches for restarts that must not happen")

// hookServer is a server shared by restart tests, whose webhooks go to a
// router that hands each room's to the receivers the test routed it to.
type hookServer struct {
	srv    *lkserver.Server
	api    *serverAPI
	router *hookRouter
}

func newHookServer(t *testing.T) *hookServer {
	t.Helper()
	r := newHookRouter(t)
	s := lkserver.StartTB(t, lkserver.Options{WebhookURLs: []string{r.url}})
	return &hookServer{srv: s, api: newServerAPI(s), router: r}
}

// hookRouter receives webhooks, keeps them, and forwards each room's to
// the URLs routed for it as they came (body and signature), answering
// with the first one's status.
type hookRouter struct {
	url    string
	client *http.Client

	mu     sync.Mutex
	routes map[string][]string
	got    []capturedHook
}

// capturedHook is a webhook as the server sent it.
type capturedHook struct {
	at     time.Time
	header http.Header
	body   []byte
	ev     *livekit.WebhookEvent
}

func newHookRouter(t *testing.T) *hookRouter {
	t.Helper()
	r := &hookRouter{routes: map[string][]string{}, client: &http.Client{Timeout: 10 * time.Second}}
	hs := httptest.NewServer(r)
	t.Cleanup(hs.Close)
	r.url = hs.URL + guard.WebhookPath
	return r
}

func (r *hookRouter) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	ev := &livekit.WebhookEvent{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, ev); err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	h := capturedHook{at: time.Now(), header: req.Header.Clone(), body: body, ev: ev}
	r.mu.Lock()
	r.got = append(r.got, h)
	targets := r.routes[ev.GetRoom().GetName()]
	r.mu.Unlock()
	code := http.StatusOK
	for i, to := range targets {
		c, err := postWebhook(r.client, to, h.header, body)
		if err != nil {
			c = http.StatusBadGateway
		}
		if i == 0 {
			code = c
		}
	}
	rw.WriteHeader(code)
}

// route forwards room's webhooks to the URLs until the test ends; the
// router answers the others 200 itself.
func (r *hookRouter) route(t *testing.T, room string, to ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes[room] = to
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.routes, room)
	})
}

// find returns the first webhook received that match accepts.
func (r *hookRouter) find(match func(*livekit.WebhookEvent) bool) (capturedHook, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range r.got {
		if match(h.ev) {
			return h, true
		}
	}
	return capturedHook{}, false
}

// wait waits for a webhook match accepts.
func (r *hookRouter) wait(t *testing.T, timeout time.Duration, what string, match func(*livekit.WebhookEvent) bool) capturedHook {
	t.Helper()
	var h capturedHook
	wait.Until(t, timeout, what, func() bool {
		var ok bool
		h, ok = r.find(match)
		return ok
	})
	return h
}

// all returns the webhooks of room received so far.
func (r *hookRouter) all(room string) []capturedHook {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []capturedHook
	for _, h := range r.got {
		if h.ev.GetRoom().GetName() == room {
			out = append(out, h)
		}
	}
	return out
}

// forward posts body with header to url and returns the status.
func postWebhook(c *http.Client, url string, header http.Header, body []byte) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/webhook+json")
	for _, k := range []string{"Authorization", "Content-Type"} {
		if v := header.Get(k); v != "" {
			req.Header.Set(k, v)
		}
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, nil
}

// agentProc is a process of a test program (a worker, lkagent guard),
// killed with its children when the test ends.
type agentProc struct {
	name        string
	cmd         *exec.Cmd
	out, stderr *lineLog
	log         *lineLog // where its log goes: stderr for workers
	base        string   // its HTTP endpoints, "http://host:port"
	exited      chan struct{}
}

// startAgentProc runs the restartagent worker against s with args (which
// should include --http-addr).
func startAgentProc(t *testing.T, bin string, s *lkserver.Server, args ...string) *agentProc {
	t.Helper()
	p := startProc(t, "worker", exec.Command(bin, args...), s)
	for i, a := range args {
		if a == "--http-addr" && i+1 < len(args) {
			p.base = "http://" + args[i+1]
		}
	}
	return p
}

// startProc starts cmd with the server's URL and keys in its environment.
// At the end of the test it is killed with its process group, and every
// job process it reported is checked gone.
func startProc(t *testing.T, name string, cmd *exec.Cmd, s *lkserver.Server) *agentProc {
	t.Helper()
	cmd.Env = append(os.Environ(), "LIVEKIT_URL="+s.URL(), "LIVEKIT_API_KEY="+s.APIKey(), "LIVEKIT_API_SECRET="+s.APISecret())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &agentProc{name: name, cmd: cmd, out: newLineLog(stdout), stderr: newLineLog(stderr), exited: make(chan struct{})}
	p.log = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("%s %d did not exit after SIGKILL", name, cmd.Process.Pid)
		}
		for _, l := range p.out.matching("job ") {
			pid, _ := strconv.Atoi(lineFields(l)["pid"])
			if pid <= 0 {
				continue
			}
			if !wait.Within(10*time.Second, func() bool { return !pidAlive(pid) }) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				t.Errorf("job process %d outlived its worker %d", pid, cmd.Process.Pid)
			}
		}
		if t.Failed() {
			t.Logf("%s %d stdout:\n%s\nstderr:\n%s", name, cmd.Process.Pid, p.out, p.stderr)
		}
	})
	return p
}

// kill SIGKILLs the process alone (not its job processes: they must die
// with it on their own) and waits for it.
func (p *agentProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s %d did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// post sends a webhook request to the process's POST /webhook and returns
// the status.
func (p *agentProc) post(t *testing.T, header http.Header, body []byte) int {
	t.Helper()
	code, err := postWebhook(&http.Client{Timeout: 10 * time.Second}, p.base+guard.WebhookPath, header, body)
	if err != nil {
		t.Fatalf("post to %s: %v", p.base, err)
	}
	return code
}

// waitRegistered waits until the worker's /worker says it is registered.
func (p *agentProc) waitRegistered(t *testing.T) {
	t.Helper()
	wait.Until(t, 60*time.Second, p.name+" registered on /worker", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("%s exited before it registered", p.name)
		default:
		}
		var v struct {
			Registered bool `json:"registered"`
		}
		res, err := (&http.Client{Timeout: 10 * time.Second}).Get(p.base + "/worker")
		if err != nil {
			return false
		}
		defer res.Body.Close()
		return res.StatusCode == http.StatusOK && json.NewDecoder(res.Body).Decode(&v) == nil && v.Registered
	})
}

// httpOK reports whether a GET of url answers 200.
func httpOK(url string) bool {
	res, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

// metric returns the sum of the series of the counter name on the
// process's /metrics whose labels include labels (name, value pairs).
func (p *agentProc) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	res, err := c.Get(p.base + "/metrics")
	if err != nil {
		t.Fatalf("%s /metrics: %v", p.name, err)
	}
	defer res.Body.Close()
	text, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("%s /metrics: %d %v", p.name, res.StatusCode, err)
	}
	var sum float64
	for _, line := range strings.Split(string(text), "\n") {
		series, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		metric, lbls, _ := strings.Cut(series, "{")
		if metric != name {
			continue
		}
		have := map[string]string{}
		for _, m := range labelRE.FindAllStringSubmatch(lbls, -1) {
			have[m[1]] = m[2]
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if match {
			v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				t.Fatalf("%s /metrics: %q: %v", p.name, line, err)
			}
			sum += v
		}
	}
	return sum
}

var labelRE = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// lineWith returns the first line that has every one of substrs.
func (l *lineLog) lineWith(substrs ...string) (string, bool) {
	if ls := l.matching(substrs...); len(ls) > 0 {
		return ls[0], true
	}
	return "", false
}

// matching returns the lines that have every one of substrs.
func (l *lineLog) matching(substrs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		all := true
		for _, s := range substrs {
			all = all && strings.Contains(line, s)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// line returns the first line with every one of substrs, failing the test
// if there is none.
func (l *lineLog) line(t *testing.T, substrs ...string) string {
	t.Helper()
	s, ok := l.lineWith(substrs...)
	if !ok {
		t.Fatalf("no line with %q in:\n%s", substrs, l)
	}
	return s
}

// waitLine waits for a line with every one of substrs and returns it.
func (l *lineLog) waitLine(t *testing.T, timeout time.Duration, substrs ...string) string {
	t.Helper()
	l.wait(t, timeout, substrs...)
	return l.line(t, substrs...)
}

// fields parses the "key=value" words of a line.
func lineFields(line string) map[string]string {
	m := map[string]string{}
	for _, w := range strings.Fields(line) {
		if k, v, ok := strings.Cut(w, "="); ok {
			m[k] = v
		}
	}
	return m
}

func mustInt64(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

// alive reports whether process pid exists and is not a zombie.
func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// freeAddr returns a loopback address with a port free right now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// joinCaller puts a caller into room until the test ends (or it leaves).
func joinCaller(t *testing.T, s *lkserver.Server, room, identity string) *lksdk.Room {
	t.Helper()
	r, err := lksdk.ConnectToRoom(s.URL(), lksdk.ConnectInfo{APIKey: s.APIKey(), APISecret: s.APISecret(),
		RoomName: room, ParticipantIdentity: identity}, lksdk.NewRoomCallback())
	if err != nil {
		t.Fatalf("%s joins %s: %v", identity, room, err)
	}
	t.Cleanup(r.Disconnect)
	return r
}

// serverAPI is a server's room and dispatch APIs.
type serverAPI struct {
	rc *lksdk.RoomServiceClient
	dc *lksdk.AgentDispatchClient
}

func newServerAPI(s *lkserver.Server) *serverAPI {
	return &serverAPI{
		rc: lksdk.NewRoomServiceClient(s.HTTPURL(), s.APIKey(), s.APISecret()),
		dc: lksdk.NewAgentDispatchServiceClient(s.HTTPURL(), s.APIKey(), s.APISecret()),
	}
}

func (a *serverAPI) dispatch(t *testing.T, req *livekit.CreateAgentDispatchRequest) *livekit.AgentDispatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d, err := a.dc.CreateDispatch(ctx, req)
	if err != nil {
		t.Fatalf("create dispatch: %v", err)
	}
	return d
}

// dispatches lists room's dispatches; none for a room that is gone.
func (a *serverAPI) dispatches(t *testing.T, room string) []*livekit.AgentDispatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := a.dc.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: room})
	if err != nil {
		// The server answers "unavailable" for a room that is gone.
		rooms, lerr := a.rc.ListRooms(ctx, &livekit.ListRoomsRequest{Names: []string{room}})
		if lerr == nil && len(rooms.Rooms) == 0 {
			return nil
		}
		t.Fatalf("list the dispatches of %s: %v", room, err)
	}
	return res.AgentDispatches
}

// participants lists room's participants; none for a room that is gone.
func (a *serverAPI) participants(t *testing.T, room string) []*livekit.ParticipantInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := a.rc.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: room})
	if err != nil {
		t.Fatalf("list the participants of %s: %v", room, err)
	}
	return res.Participants
}

// participant returns room's participant identity, if there.
func (a *serverAPI) participant(t *testing.T, room, identity string) (*livekit.ParticipantInfo, bool) {
	t.Helper()
	for _, p := range a.participants(t, room) {
		if p.Identity == identity {
			return p, true
		}
	}
	return nil, false
}
