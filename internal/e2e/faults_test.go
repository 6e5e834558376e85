package e2e

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"google.golang.org/protobuf/proto"

	"github.com/lkagent/lkagent/internal/testkit/faultproxy"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
	"github.com/lkagent/lkagent/internal/testkit/wait"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// These tests prove the worker against the real server with faults made
// by a loopback proxy in front of it. The worker and its jobs' rooms both
// go through the proxy (a job joins at the worker's URL); the faults hit
// only the worker's /agent connection, so a job keeps its room.

// proxyTo starts a fault proxy in front of s until the test ends.
func proxyTo(t *testing.T, s *lkserver.Server) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(strings.TrimPrefix(s.URL(), "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// proxied is a worker that runs until the test ends, connected to a
// server through a URL of the test's choice.
type proxied struct {
	w             *worker.Worker
	registrations atomic.Int32
	mu            sync.Mutex
	states        []worker.StateChange
}

func (p *proxied) disconnects() []worker.StateChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []worker.StateChange
	for _, c := range p.states {
		if c.State == worker.StateDisconnected {
			out = append(out, c)
		}
	}
	return out
}

// runVia runs a worker against s, dialled at url, until the test ends.
func runVia(t *testing.T, s *lkserver.Server, url string, o worker.Options, h job.Handler) *proxied {
	t.Helper()
	o.URL, o.APIKey, o.APISecret = url, s.APIKey(), s.APISecret()
	p := &proxied{}
	o.OnStateChange = func(c worker.StateChange) {
		p.mu.Lock()
		p.states = append(p.states, c)
		p.mu.Unlock()
		if c.State == worker.StateRegistered {
			p.registrations.Add(1)
		}
	}
	p.w = startWorkerAt(t, o, h)
	return p
}

// inRoom is a handler that joins its room and stays until its context
// ends; it records the job's context for the test.
type inRoom struct {
	joined chan *job.Job
	mu     sync.Mutex
	ctxs   map[string]context.Context
}

func newInRoom() *inRoom {
	return &inRoom{joined: make(chan *job.Job, 100), ctxs: map[string]context.Context{}}
}

func (h *inRoom) handle(ctx context.Context, j *job.Job) error {
	if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
		return err
	}
	h.mu.Lock()
	h.ctxs[j.ID()] = ctx
	h.mu.Unlock()
	h.joined <- j
	<-ctx.Done()
	return nil
}

func (h *inRoom) ctx(id string) context.Context {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ctxs[id]
}

func (h *inRoom) waitJoined(t *testing.T) *job.Job {
	t.Helper()
	select {
	case j := <-h.joined:
		return j
	case <-time.After(30 * time.Second):
		t.Fatal("no job joined its room within 30s")
		return nil
	}
}

// agentInRoom reports whether identity is a participant of room.
func agentInRoom(t *testing.T, s *lkserver.Server, room, identity string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := lksdk.NewRoomServiceClient(s.HTTPURL(), s.APIKey(), s.APISecret()).
		ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: room})
	if err != nil {
		t.Fatalf("ListParticipants(%s): %v", room, err)
	}
	for _, p := range res.GetParticipants() {
		if p.GetIdentity() == identity {
			return true
		}
	}
	return false
}

// agentActive says whether identity is in room with its connection up
// (state ACTIVE). An agent that leaves before that is removed by the
// server at once, which then records the job's end itself ("agent worker
// left the room") before the worker's own report can arrive.
func agentActive(t *testing.T, s *lkserver.Server, room, identity string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := lksdk.NewRoomServiceClient(s.HTTPURL(), s.APIKey(), s.APISecret()).
		GetParticipant(ctx, &livekit.RoomParticipantIdentity{Room: room, Identity: identity})
	return err == nil && p.GetState() == livekit.ParticipantInfo_ACTIVE
}

func dispatchOn(t *testing.T, s *lkserver.Server, agentName, room, deployment, metadata string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := lksdk.NewAgentDispatchServiceClient(s.HTTPURL(), s.APIKey(), s.APISecret()).CreateDispatch(ctx,
		&livekit.CreateAgentDispatchRequest{AgentName: agentName, Room: room, Deployment: deployment, Metadata: metadata}); err != nil {
		t.Fatalf("CreateDispatch: %v", err)
	}
}

// checkStillServing: the job j still holds its room with its context
// live, Run has not returned, and a new dispatch runs on the worker.
func checkStillServing(t *testing.T, s *lkserver.Server, p *proxied, h *inRoom, j *job.Job, agent string) {
	t.Helper()
	if err := h.ctx(j.ID()).Err(); err != nil {
		t.Fatalf("the job in its room was cancelled: %v (cause %v)", err, context.Cause(h.ctx(j.ID())))
	}
	if !agentInRoom(t, s, j.RoomName(), j.Identity()) {
		t.Fatalf("the agent %s is no longer in room %s", j.Identity(), j.RoomName())
	}
	select {
	case <-p.w.Done():
		t.Fatalf("the worker stopped: %v", p.w.Err())
	default:
	}
	room := uniq("room")
	dispatchOn(t, s, agent, room, "staging", "")
	if next := h.waitJoined(t); next.RoomName() != room {
		t.Fatalf("new dispatch for %s ran in %s", room, next.RoomName())
	}
}

// Proof 1: connections cut right after the upgrade, five in a row (three
// with FIN, two with RST), as a flapping ingress or a crash-looping server
// does. The job keeps its room and its context, Run goes on, and the
// worker registers again once the network heals and serves a new dispatch.
func TestCutsAfterUpgradeKeepJobInRoom(t *testing.T) {
	t.Parallel()
	px := proxyTo(t, srv)
	agent := uniq("flap")
	h := newInRoom()
	p := runVia(t, srv, px.URL(), worker.Options{AgentName: agent, Deployment: "staging",
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}, h.handle)
	dispatchOn(t, srv, agent, uniq("room"), "staging", "")
	j := h.waitJoined(t)

	before := px.Accepted(faultproxy.KindAgent)
	start := time.Now()
	px.CutAfterUpgradeSeq(faultproxy.KindAgent, faultproxy.FIN, faultproxy.FIN, faultproxy.FIN, faultproxy.RST, faultproxy.RST)
	if n := px.Cut(faultproxy.KindAgent, faultproxy.FIN); n != 1 {
		t.Fatalf("cut %d agent connections, want 1", n)
	}
	waitFor(t, time.Minute, "re-registration after five cut connections", func() bool { return p.registrations.Load() >= 2 })
	t.Logf("registered again %s after the first cut, on agent connection %d (%d cut after their upgrade)",
		time.Since(start).Round(time.Millisecond), px.Accepted(faultproxy.KindAgent)-before, 5)
	if got := px.Accepted(faultproxy.KindAgent) - before; got < 6 {
		t.Fatalf("%d agent connections since the first cut, want at least 6 (5 cut, then one that held)", got)
	}
	if d := p.disconnects(); len(d) < 6 {
		t.Errorf("%d disconnects reported, want 6", len(d))
	}
	lkserver.AwaitRouting()
	checkStillServing(t, srv, p, h, j, agent)
}

// Proof 2: a black hole (TCP open, nothing passes) on the worker's
// connection is detected within PingInterval + PongTimeout; the job keeps
// its room through 30 seconds of it; the worker registers again once the
// network heals.
func TestBlackHoleDetectedJobKeepsRoom(t *testing.T) {
	t.Parallel()
	px := proxyTo(t, srv)
	agent := uniq("hole")
	h := newInRoom()
	const ping, pong = 2 * time.Second, 3 * time.Second
	p := runVia(t, srv, px.URL(), worker.Options{AgentName: agent, Deployment: "staging",
		PingInterval: ping, PongTimeout: pong, RegisterTimeout: 5 * time.Second,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}, h.handle)
	dispatchOn(t, srv, agent, uniq("room"), "staging", "")
	j := h.waitJoined(t)

	start := time.Now()
	px.BlackHole(faultproxy.KindAgent)
	waitFor(t, time.Minute, "the black hole to be detected", func() bool { return len(p.disconnects()) > 0 })
	detected := time.Since(start)
	first := p.disconnects()[0]
	t.Logf("black hole detected after %s (PingInterval+PongTimeout = %s): %v", detected.Round(time.Millisecond), ping+pong, first.Err)
	if !errors.Is(first.Err, worker.ErrPongTimeout) {
		t.Errorf("disconnected with %v, want ErrPongTimeout", first.Err)
	}
	// Generous: the bound is the worker's; the margin is for a loaded machine.
	if detected > ping+pong+2*time.Second {
		t.Errorf("detected after %s, want within PingInterval+PongTimeout (%s)", detected, ping+pong)
	}
	wait.Holds(t, 30*time.Second-time.Since(start), "the job running on its one registration through the black hole", func() bool {
		return h.ctx(j.ID()).Err() == nil && p.registrations.Load() == 1
	})
	if err := h.ctx(j.ID()).Err(); err != nil {
		t.Fatalf("the job was cancelled during the black hole: %v", err)
	}
	if !agentInRoom(t, srv, j.RoomName(), j.Identity()) {
		t.Fatalf("the agent left its room during the black hole")
	}
	if p.registrations.Load() != 1 {
		t.Fatalf("registered %d times through a black hole", p.registrations.Load())
	}
	healed := time.Now()
	px.Heal()
	waitFor(t, time.Minute, "re-registration after the heal", func() bool { return p.registrations.Load() >= 2 })
	t.Logf("registered again %s after the heal", time.Since(healed).Round(time.Millisecond))
	lkserver.AwaitRouting()
	checkStillServing(t, srv, p, h, j, agent)
}

// jobLine matches the server's line for a job's end or an update it
// dropped, capturing the message and the job id.
var jobLine = regexp.MustCompile(`(job ended|received job update for unknown job).*"jobID": "(AJ_[A-Za-z0-9]+)"(?:, "status": "(JS_[A-Z]+)")?`)

// serverJobLines returns, for each job id, the server's "job ended" status
// and how many of its updates the server dropped as an unknown job's.
func serverJobLines(log string) (ended map[string]string, unknown map[string]int) {
	ended, unknown = map[string]string{}, map[string]int{}
	for _, m := range jobLine.FindAllStringSubmatch(log, -1) {
		if m[1] == "job ended" {
			ended[m[2]] = m[3]
		} else {
			unknown[m[2]]++
		}
	}
	return ended, unknown
}

// Proof 3: 100 handlers that return at once, half with nil and half with
// an error. The server records the end of each with the right status, and
// drops none of the worker's updates as an unknown job's (the assignment
// race of the server, which StatusDelay outlasts).
func TestFastJobEndsAllRecorded(t *testing.T) {
	t.Parallel()
	logs := &syncbuf.Buffer{}
	s := lkserver.StartTB(t, lkserver.Options{LogLevel: "debug", Logs: logs})
	agent := uniq("fast")
	var mu sync.Mutex
	want := map[string]bool{}
	runVia(t, s, s.URL(), worker.Options{AgentName: agent}, func(ctx context.Context, j *job.Job) error {
		mu.Lock()
		want[j.ID()] = true
		mu.Unlock()
		if j.Metadata() == "fail" {
			return errors.New("handler failed on purpose")
		}
		return nil
	})
	const n = 100
	var wg sync.WaitGroup
	for i := range n {
		meta := "ok"
		if i%2 == 1 {
			meta = "fail"
		}
		wg.Go(func() { dispatchOn(t, s, agent, uniq("room"), "", meta) })
	}
	wg.Wait()
	waitFor(t, 2*time.Minute, "100 handlers to run", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(want) == n
	})
	mu.Lock()
	defer mu.Unlock()
	waitFor(t, time.Minute, "the server to record 100 job ends", func() bool {
		ended, _ := serverJobLines(logs.String())
		got := 0
		for id := range want {
			if ended[id] != "" {
				got++
			}
		}
		return got == n
	})
	ended, unknown := serverJobLines(logs.String())
	var ok, failed int
	for id := range want {
		switch ended[id] {
		case "JS_SUCCESS":
			ok++
		case "JS_FAILED":
			failed++
		}
		if unknown[id] > 0 {
			t.Errorf("job %s: %d updates dropped by the server as an unknown job's", id, unknown[id])
		}
	}
	t.Logf("server log: %d jobs ended JS_SUCCESS, %d JS_FAILED, %d updates of unknown jobs", ok, failed, len(unknown))
	if ok != n/2 || failed != n/2 {
		t.Errorf("%d successes and %d failures recorded, want %d of each", ok, failed, n/2)
	}
}

// Proof 4: the server is killed and restarted with 10 jobs running. After
// registering again the worker sends MigrateJob with their ids (seen on
// the wire); their ends, which belong to the dead connection, are counted
// as dropped and never sent (the server would drop them as unknown jobs').
func TestServerRestartMigratesJobs(t *testing.T) {
	t.Parallel()
	logs := &syncbuf.Buffer{}
	s := lkserver.StartTB(t, lkserver.Options{LogLevel: "debug", Logs: logs})
	px := proxyTo(t, s)
	var (
		tapMu       sync.Mutex
		registered  int        // registrations seen on the wire
		migrated    [][]string // MigrateJob requests, in order
		sentAfter   []string   // job ids of updates sent after the second registration
		workerFrame = func(b []byte) *livekit.WorkerMessage {
			m := &livekit.WorkerMessage{}
			if proto.Unmarshal(b, m) != nil {
				return nil
			}
			return m
		}
	)
	px.OnAgentFrame(func(fromClient bool, opcode int, payload []byte) {
		if !fromClient || opcode != 2 {
			return
		}
		m := workerFrame(payload)
		tapMu.Lock()
		defer tapMu.Unlock()
		switch {
		case m.GetRegister() != nil:
			registered++
		case m.GetMigrateJob() != nil:
			migrated = append(migrated, m.GetMigrateJob().GetJobIds())
		case m.GetUpdateJob() != nil && registered >= 2:
			sentAfter = append(sentAfter, m.GetUpdateJob().GetJobId())
		}
	})
	agent := uniq("migrate")
	release := make(chan struct{})
	var running atomic.Int32
	ids := make(chan string, 10)
	p := runVia(t, s, px.URL(), worker.Options{AgentName: agent,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}, func(ctx context.Context, j *job.Job) error {
		ids <- j.ID()
		running.Add(1)
		<-release
		return nil
	})
	const n = 10
	for range n {
		dispatchOn(t, s, agent, uniq("room"), "", "")
	}
	waitFor(t, time.Minute, "10 jobs to run", func() bool { return running.Load() == n })
	time.Sleep(2 * worker.StatusDelay) // their running statuses reach the server

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "re-registration", func() bool { return p.registrations.Load() >= 2 })
	var want []string
	for range n {
		want = append(want, <-ids)
	}
	waitFor(t, 30*time.Second, "a MigrateJob request on the wire", func() bool {
		tapMu.Lock()
		defer tapMu.Unlock()
		return len(migrated) > 0
	})
	tapMu.Lock()
	got := migrated[0]
	tapMu.Unlock()
	if !sameSet(got, want) {
		t.Fatalf("MigrateJob named %v, want the 10 running jobs %v", got, want)
	}

	close(release)
	waitFor(t, 30*time.Second, "the 10 jobs to end", func() bool { return len(p.w.Snapshot().Jobs) == 0 })
	waitFor(t, 10*time.Second, "10 dropped statuses counted", func() bool {
		return workerMetric(t, p.w, "lkagent_job_statuses_dropped_total") == n
	})
	// A status is dropped, and counted, instead of being queued: once the
	// count is reached nothing more can be sent for these jobs.
	_, unknown := serverJobLines(logs.String())
	tapMu.Lock()
	defer tapMu.Unlock()
	for _, id := range sentAfter {
		if contains(want, id) {
			t.Errorf("an update of job %s, which belonged to the dead connection, was sent on the new one", id)
		}
	}
	for _, id := range want {
		if unknown[id] > 0 {
			t.Errorf("the server dropped %d updates of job %s as an unknown job's", unknown[id], id)
		}
	}
	t.Logf("MigrateJob named %d jobs; %v statuses dropped and counted; 0 sent as unknown", len(got),
		workerMetric(t, p.w, "lkagent_job_statuses_dropped_total"))
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, x := range a {
		seen[x]++
	}
	for _, x := range b {
		if seen[x]--; seen[x] < 0 {
			return false
		}
	}
	return true
}

// workerMetric reads a counter or gauge without labels from the worker's
// registry.
func workerMetric(t *testing.T, w *worker.Worker, name string) float64 {
	t.Helper()
	fams, err := w.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		var v float64
		for _, m := range f.GetMetric() {
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return v
	}
	t.Fatalf("no metric %s", name)
	return 0
}
