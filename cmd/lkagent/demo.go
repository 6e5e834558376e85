package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/livekit/protocol/agent"
	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"

	"github.com/lkagent/lkagent/dispatch"
	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/internal/sdklog"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// Demo settings.
const (
	demoAgent      = "echo"
	demoUnserved   = "canary"   // a deployment no demo worker serves until the held step starts one
	demoInvalid    = "bad_name" // '_' is reserved: not a valid deployment
	demoRunTimeout = 20 * time.Second
	// demoQuiet is how long the demo waits to be sure that nobody runs a
	// job (the unserved deployment) and that nothing runs twice.
	demoQuiet = 3 * time.Second
)

func runDemo(ctx context.Context, e *env, args []string) error {
	f := newFlags("demo", "[--logs]",
		"Starts a local LiveKit server "+lkserver.Version+", a production and a staging worker of the echo agent,\n"+
			"and dispatches jobs to each deployment, explicitly (dispatch.Client) and through a participant's\n"+
			"join token. It shows which worker ran which job, checks that nothing crossed over, that a\n"+
			"dispatch to canary, made while no canary worker runs, is served once a canary worker starts\n"+
			"(a held dispatch), and that an invalid deployment is rejected.\n"+
			"It exits 0 when every dispatch was routed correctly. Ctrl-C stops it cleanly.")
	logs := f.fs.Bool("logs", false, "copy the LiveKit server's own log to stderr")
	if err := f.parse(e, args); err != nil {
		return err
	}
	d := &demo{out: &syncWriter{w: e.stdout}, start: time.Now(), serverLogs: logWriter(*logs, e.stderr)}
	return d.run(ctx)
}

// jobRun is one job a demo worker ran.
type jobRun struct {
	worker     string // deployment of the worker that ran it ("" production)
	deployment string // deployment of the job
	room       string
	jobID      string
	identity   string
}

// result is one line of the summary.
type result struct {
	name     string // what was dispatched
	room     string
	expected string // worker that should run it, "nobody" or "rejected"
	got      string // what happened
	ok       bool
	note     string
	wantRuns int // jobs that should run in room: 1, or 0 when nobody should run it
}

// demoWorker is one in-process worker of the demo.
type demoWorker struct {
	deployment string
	w          *worker.Worker
}

type demo struct {
	out        io.Writer
	start      time.Time
	serverLogs io.Writer

	srv       *lkserver.Server
	dispatch  *lksdk.AgentDispatchClient
	dc        *dispatch.Client
	rooms     *lksdk.RoomServiceClient
	workers   []*demoWorker
	callers   []*lksdk.Room
	roomsUsed []string

	mu      sync.Mutex
	runs    []jobRun
	changed chan struct{} // closed and replaced when runs grows
	results []result
}

// say prints one timestamped line of the live view.
func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "[%6.2fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func label(deployment string) string { return echoagent.DeploymentLabel(deployment) }

func (d *demo) run(ctx context.Context) (err error) {
	d.changed = make(chan struct{})
	fmt.Fprintf(d.out, "lkagent demo: one agent, two deployments (production and staging), one real LiveKit server\n\n")
	defer func() {
		if ctx.Err() != nil {
			fmt.Fprintln(d.out)
			d.say("%v: stopping everything", interrupted(ctx))
		}
		d.shutdown()
		if err != nil && ctx.Err() != nil {
			err = interrupted(ctx)
		}
	}()

	d.say("starting LiveKit server %s on loopback", lkserver.Version)
	srv, err := startServer(ctx, d.out, lkserver.Options{Logs: d.serverLogs})
	if err != nil {
		return err
	}
	d.srv = srv
	d.dispatch = lksdk.NewAgentDispatchServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret())
	d.dc = dispatch.NewClient(srv.URL(), srv.APIKey(), srv.APISecret())
	d.rooms = lksdk.NewRoomServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret())
	d.say("server ready at %s (pid %d)", srv.URL(), srv.PID())

	// The SDK's process-wide logger (pion's lines) belongs to neither
	// worker: both run in this process.
	sdklog.Install(d.warnLogger("          ! webrtc: "))
	d.say("starting two workers of agent %q: one registered as production (deployment \"\"), one as staging", demoAgent)
	for _, dep := range []string{"", "staging"} {
		if err := d.startWorker(ctx, dep); err != nil {
			return err
		}
	}
	time.Sleep(lkserver.RegistrationSettle)
	fmt.Fprintln(d.out)

	steps := []func(context.Context) error{
		func(ctx context.Context) error { return d.explicit(ctx, "") },
		func(ctx context.Context) error { return d.explicit(ctx, "staging") },
		func(ctx context.Context) error { return d.tokenBased(ctx, "") },
		func(ctx context.Context) error { return d.tokenBased(ctx, "staging") },
		d.held,
		d.invalid,
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return interrupted(ctx)
		}
		fmt.Fprintln(d.out)
	}
	d.checkNoStrayRuns(ctx)
	if ctx.Err() != nil {
		return interrupted(ctx)
	}
	return d.summary()
}

// startWorker starts a worker of the demo agent for deployment and waits
// until it registered.
func (d *demo) startWorker(ctx context.Context, deployment string) error {
	name := label(deployment)
	// Warnings and errors of the worker (a declined foreign offer, a lost
	// connection) show in the live view.
	log := d.warnLogger(fmt.Sprintf("          ! %s worker: ", name))
	w, err := worker.New(worker.Options{
		URL: d.srv.URL(), APIKey: d.srv.APIKey(), APISecret: d.srv.APISecret(),
		AgentName:       demoAgent,
		Deployment:      deployment,
		OnRequest:       echoagent.OnRequest,
		DrainTimeout:    3 * time.Second,
		ShutdownTimeout: 5 * time.Second,
		Logger:          log,
		KeepSDKLogger:   true, // see run
	}, func(ctx context.Context, j *job.Job) error {
		d.record(jobRun{worker: deployment, deployment: j.Deployment(), room: j.RoomName(), jobID: j.ID(), identity: j.Identity()})
		return echoagent.Handle(ctx, j)
	})
	if err != nil {
		return fmt.Errorf("create the %s worker: %w", name, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.Start(sctx); err != nil {
		if ctx.Err() != nil {
			return interrupted(ctx)
		}
		return fmt.Errorf("the %s worker did not register: %w", name, err)
	}
	d.workers = append(d.workers, &demoWorker{deployment: deployment, w: w})
	d.say("%s worker registered with the server as %s", name, w.Snapshot().WorkerID)
	return nil
}

// warnLogger is a logger of warnings and errors for the live view, each
// line after prefix.
func (d *demo) warnLogger(prefix string) *slog.Logger {
	return slog.New(slog.NewTextHandler(&prefixWriter{w: d.out, prefix: prefix},
		&slog.HandlerOptions{Level: slog.LevelWarn, ReplaceAttr: dropTime}))
}

func dropTime(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// record notes a job a worker ran and shows it.
func (d *demo) record(r jobRun) {
	d.mu.Lock()
	d.runs = append(d.runs, r)
	close(d.changed)
	d.changed = make(chan struct{})
	d.mu.Unlock()
	d.say("  %s worker took job %s in room %s (job deployment: %s), joining as %s",
		label(r.worker), r.jobID, r.room, label(r.deployment), r.identity)
}

// runsIn returns the jobs run in room so far, and a channel closed at the
// next run.
func (d *demo) runsIn(room string) ([]jobRun, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []jobRun
	for _, r := range d.runs {
		if r.room == room {
			out = append(out, r)
		}
	}
	return out, d.changed
}

// waitRun waits up to timeout for a job in room.
func (d *demo) waitRun(ctx context.Context, room string, timeout time.Duration) (jobRun, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		runs, changed := d.runsIn(room)
		if len(runs) > 0 {
			return runs[0], true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return jobRun{}, false
		case <-ctx.Done():
			return jobRun{}, false
		}
	}
}

// judge checks that the job of room ran on the worker of want, and that
// the agent is in the room.
func (d *demo) judge(ctx context.Context, name, room, want string) (jobRun, bool) {
	res := result{name: name, room: room, expected: label(want), wantRuns: 1}
	defer func() { d.results = append(d.results, res) }()
	r, ok := d.waitRun(ctx, room, demoRunTimeout)
	if !ok {
		if ctx.Err() != nil {
			res.got, res.note = "-", "interrupted"
			return r, false
		}
		res.got, res.note = "nobody", fmt.Sprintf("no worker ran it within %s", demoRunTimeout)
		d.say("  VIOLATION: no worker ran the job within %s", demoRunTimeout)
		return r, false
	}
	res.got = label(r.worker)
	switch {
	case r.worker != want:
		res.note = "ran on the wrong deployment's worker"
		d.say("  VIOLATION: the %s worker ran a job dispatched to %s", label(r.worker), label(want))
		return r, false
	case r.deployment != want:
		res.note = fmt.Sprintf("the job says deployment %q", r.deployment)
		d.say("  VIOLATION: the job carries deployment %q, dispatched to %q", r.deployment, want)
		return r, false
	}
	p, err := d.waitParticipant(ctx, room, r.identity)
	if err != nil {
		res.note = err.Error()
		d.say("  VIOLATION: %v", err)
		return r, false
	}
	d.say("  the server lists %s in room %s: kind %s, attributes deployment=%s, lk.agent_name=%s",
		p.GetIdentity(), room, p.GetKind(), p.GetAttributes()[echoagent.AttrDeployment], p.GetAttributes()["lk.agent_name"])
	res.ok = true
	return r, true
}

// waitParticipant waits until the server lists identity in room.
func (d *demo) waitParticipant(ctx context.Context, room, identity string) (*livekit.ParticipantInfo, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := d.rooms.ListParticipants(rctx, &livekit.ListParticipantsRequest{Room: room})
		cancel()
		if err == nil {
			for _, p := range res.GetParticipants() {
				if p.GetIdentity() == identity {
					return p, nil
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("agent %s never showed up in room %s", identity, room)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// explicit dispatches with CreateDispatch to deployment.
func (d *demo) explicit(ctx context.Context, deployment string) error {
	room := "explicit-" + label(deployment)
	name := "explicit → " + label(deployment)
	d.roomsUsed = append(d.roomsUsed, room)
	d.say("▶ dispatch.Client.Create(agent %q, room %q, deployment %q): a new room, created with its dispatch", demoAgent, room, deployment)
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	ad, err := d.dc.Create(rctx, &livekit.CreateAgentDispatchRequest{AgentName: demoAgent, Room: room, Deployment: deployment})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return interrupted(ctx)
		}
		return fmt.Errorf("dispatch to %s: %v", label(deployment), err)
	}
	d.say("  dispatch %s created; the server echoes deployment %q", ad.GetId(), ad.GetDeployment())
	d.judge(ctx, name, room, deployment)
	return nil
}

// tokenBased lets a caller create the room with a token whose room
// configuration dispatches the agent's deployment, then talks to the agent.
func (d *demo) tokenBased(ctx context.Context, deployment string) error {
	room := "token-" + label(deployment)
	name := "token → " + label(deployment)
	identity := "caller-" + label(deployment)
	d.roomsUsed = append(d.roomsUsed, room)
	token, err := joinToken(d.srv.APIKey(), d.srv.APISecret(), identity, "", room, demoAgent, deployment, "", 10*time.Minute)
	if err != nil {
		return err
	}
	d.say("▶ %s joins room %q with a token whose room config dispatches agent %q, deployment %q", identity, room, demoAgent, deployment)
	replies := make(chan string, 16)
	cb := lksdk.NewRoomCallback()
	cb.OnDataPacket = func(p lksdk.DataPacket, _ lksdk.DataReceiveParams) {
		if u, ok := p.(*lksdk.UserDataPacket); ok {
			select {
			case replies <- string(u.Payload):
			default:
			}
		}
	}
	caller, err := lksdk.ConnectToRoomWithToken(d.srv.URL(), token, cb, lksdk.WithLogger(lklogger.GetDiscardLogger()))
	if err != nil {
		if ctx.Err() != nil {
			return interrupted(ctx)
		}
		return fmt.Errorf("%s could not join room %s: %v", identity, room, err)
	}
	d.callers = append(d.callers, caller)
	r, ok := d.judge(ctx, name, room, deployment)
	if !ok {
		return nil
	}
	// The caller talks to the agent: the reply names the deployment.
	text := "hello from " + identity
	want := echoagent.Reply(deployment, text)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		_ = caller.LocalParticipant.PublishDataPacket(lksdk.UserData([]byte(text)),
			lksdk.WithDataPublishReliable(true), lksdk.WithDataPublishDestination([]string{r.identity}))
		select {
		case got := <-replies:
			if got == want {
				d.say("  %s said %q; the agent answered %q", identity, text, got)
				return nil
			}
			d.say("  unexpected answer %q", got)
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
	}
	if ctx.Err() != nil {
		return interrupted(ctx)
	}
	d.say("  (the agent did not answer the caller's message within 15s)")
	return nil
}

// held dispatches to a deployment no worker serves yet: the server drops
// the job (no canary worker) and would never offer it again; a canary
// worker started afterwards finds the held dispatch and serves it, once.
func (d *demo) held(ctx context.Context) error {
	room := "explicit-" + demoUnserved
	d.roomsUsed = append(d.roomsUsed, room)
	res := result{name: "explicit → " + demoUnserved, room: room, expected: demoUnserved, wantRuns: 1}
	defer func() { d.results = append(d.results, res) }()
	d.say("▶ dispatch.Client.Create(agent %q, room %q, deployment %q): no %s worker is running", demoAgent, room, demoUnserved, demoUnserved)
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	ad, err := d.dc.Create(rctx, &livekit.CreateAgentDispatchRequest{AgentName: demoAgent, Room: room, Deployment: demoUnserved})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return interrupted(ctx)
		}
		return fmt.Errorf("dispatch to %s: %v", demoUnserved, err)
	}
	dispatched := time.Now()
	d.say("  dispatch %s created (deployment %q); waiting %s to see that no worker runs it", ad.GetId(), ad.GetDeployment(), demoQuiet)
	if r, ran := d.waitRun(ctx, room, demoQuiet); ran {
		res.got, res.note = label(r.worker), "a worker of another deployment ran it"
		d.say("  VIOLATION: the %s worker ran a job dispatched to %s", label(r.worker), demoUnserved)
		return nil
	}
	if ctx.Err() != nil {
		return interrupted(ctx)
	}
	d.say("  no worker ran it: the server dropped the job (no %s worker) and will not offer it again by itself", demoUnserved)
	d.say("  starting a %s worker: it looks for held dispatches when it registers, and again once a dispatch is %s old", demoUnserved, worker.DefaultHeldAfter)
	if err := d.startWorker(ctx, demoUnserved); err != nil {
		return err
	}
	registered := time.Now()
	r, ok := d.waitRun(ctx, room, worker.DefaultHeldAfter+demoRunTimeout)
	if !ok {
		if ctx.Err() != nil {
			res.got, res.note = "-", "interrupted"
			return interrupted(ctx)
		}
		res.got, res.note = "nobody", "the held dispatch was not served"
		d.say("  VIOLATION: the held dispatch was not served within %s of the %s worker's registration", worker.DefaultHeldAfter+demoRunTimeout, demoUnserved)
		return nil
	}
	res.got = label(r.worker)
	if r.worker != demoUnserved {
		res.note = "ran on the wrong deployment's worker"
		d.say("  VIOLATION: the %s worker ran a job dispatched to %s", label(r.worker), demoUnserved)
		return nil
	}
	res.ok = true
	d.say("  held dispatch served: %s after the dispatch, %s after the %s worker registered",
		time.Since(dispatched).Round(100*time.Millisecond), time.Since(registered).Round(100*time.Millisecond), demoUnserved)
	return nil
}

// invalid shows that an invalid deployment is rejected: by the same check
// the server makes, before sending, and by the server itself.
func (d *demo) invalid(ctx context.Context) error {
	res := result{name: fmt.Sprintf("invalid deployment %q", demoInvalid), room: "-", expected: "rejected"}
	defer func() { d.results = append(d.results, res) }()
	d.say("▶ dispatch to deployment %q ('_' is reserved)", demoInvalid)
	local := agent.ValidateDeployment(demoInvalid)
	if local == nil {
		res.got, res.note = "accepted", "local validation accepted it"
		d.say("  VIOLATION: agent.ValidateDeployment accepted %q", demoInvalid)
		return nil
	}
	d.say("  rejected before sending: %v", local)
	room := "explicit-invalid"
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	ad, err := d.dispatch.CreateDispatch(rctx, &livekit.CreateAgentDispatchRequest{AgentName: demoAgent, Room: room, Deployment: demoInvalid})
	cancel()
	if ctx.Err() != nil {
		return interrupted(ctx)
	}
	if err == nil {
		d.roomsUsed = append(d.roomsUsed, room)
		res.got, res.note = "accepted", "the server accepted dispatch "+ad.GetId()
		d.say("  VIOLATION: the server accepted the dispatch (%s)", ad.GetId())
		return nil
	}
	res.got, res.ok = "rejected", true
	msg := oneLine(err.Error())
	var te twirp.Error
	if errors.As(err, &te) {
		msg = fmt.Sprintf("%s: %s", te.Code(), twirpMessage(te))
	}
	d.say("  sent anyway, the server rejects it too: %s", msg)
	return nil
}

// checkNoStrayRuns waits a moment and checks that no job ran twice, or in a
// room it should not have.
func (d *demo) checkNoStrayRuns(ctx context.Context) {
	d.say("checking for stray jobs (a job run twice, or by both workers) for %s", demoQuiet)
	select {
	case <-time.After(demoQuiet):
	case <-ctx.Done():
		return
	}
	count := map[string]int{}
	d.mu.Lock()
	runs := append([]jobRun(nil), d.runs...)
	d.mu.Unlock()
	for _, r := range runs {
		count[r.room]++
	}
	stray := false
	for i := range d.results {
		res := &d.results[i]
		n := count[res.room]
		delete(count, res.room)
		if res.ok && n != res.wantRuns {
			res.ok = false
			res.got = fmt.Sprintf("%d jobs", n)
			res.note = fmt.Sprintf("%d jobs ran, %d expected", n, res.wantRuns)
			d.say("  VIOLATION: %d jobs ran in room %s, %d expected", n, res.room, res.wantRuns)
			stray = true
		}
	}
	for room, n := range count {
		d.results = append(d.results, result{name: "stray job", room: room, expected: "nobody", got: fmt.Sprintf("%d jobs", n),
			note: "a job ran in a room nothing was dispatched to"})
		d.say("  VIOLATION: %d jobs ran in room %s, where nothing was dispatched", n, room)
		stray = true
	}
	if !stray {
		d.say("  none: %d jobs ran in all, each exactly once", len(runs))
	}
}

// summary prints the table and says whether everything routed correctly.
func (d *demo) summary() error {
	fmt.Fprintf(d.out, "\nSummary\n\n")
	tw := newTable(d.out)
	fmt.Fprintln(tw, "  DISPATCH\tROOM\tEXPECTED\tRAN ON\tRESULT")
	bad := 0
	var reasons []string
	for _, r := range d.results {
		verdict := "OK"
		if !r.ok {
			verdict = "VIOLATION"
			if r.note != "" {
				verdict += ": " + r.note
			}
			bad++
			reasons = append(reasons, r.name+" ("+r.note+")")
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", r.name, r.room, r.expected, r.got, verdict)
	}
	_ = tw.Flush()
	fmt.Fprintln(d.out)
	if bad > 0 {
		return fmt.Errorf("%d of %d checks failed: %s", bad, len(d.results), strings.Join(reasons, "; "))
	}
	fmt.Fprintf(d.out, "%d/%d OK: every job ran on a worker of its own deployment, nothing crossed over.\n", len(d.results), len(d.results))
	return nil
}

// shutdown stops everything the demo started, in order: callers leave, the
// rooms are deleted (the server terminates their jobs), the workers drain,
// the server stops. It never uses the demo's context, which may be done.
func (d *demo) shutdown() {
	if d.srv == nil {
		return
	}
	start := time.Now()
	for _, c := range d.callers {
		c.Disconnect()
	}
	for _, room := range d.roomsUsed {
		rctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, _ = d.rooms.DeleteRoom(rctx, &livekit.DeleteRoomRequest{Room: room})
		cancel()
	}
	var stuck []string
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, dw := range d.workers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_ = dw.w.Stop(ctx) // jobs still in their rooms after the drain are cancelled: that is the demo's end
			if err := dw.w.Err(); err != nil {
				mu.Lock()
				stuck = append(stuck, fmt.Sprintf("%s worker: %v", label(dw.deployment), err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	pid := d.srv.PID()
	if err := d.srv.Stop(); err != nil {
		stuck = append(stuck, "server: "+oneLine(err.Error()))
	}
	if len(stuck) > 0 {
		d.say("stopped with problems: %s", strings.Join(stuck, "; "))
		return
	}
	d.say("stopped: rooms deleted, workers drained, server (pid %d) stopped in %s", pid, time.Since(start).Round(time.Millisecond))
}
