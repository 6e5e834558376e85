// Package worker runs LiveKit agent jobs: it registers with a LiveKit server
// under an agent name and a deployment label, answers the server's job
// offers, and runs a [job.Handler] for each job it takes.
//
// A worker takes only jobs of its own agent name and deployment: the server
// routes by both, and the worker checks every offer again and declines (and
// counts) any that is not its own.
//
//	w, err := worker.New(worker.Options{AgentName: "support-bot", Deployment: "staging"}, handle)
//	if err != nil {
//		log.Fatal(err)
//	}
//	err = w.Run(ctx) // until ctx ends; then drains
//
// Run survives lost connections (reconnecting with backoff, jobs untouched)
// and, when its context ends, drains: it stops taking offers, lets running
// jobs finish up to Options.DrainTimeout, then cancels them. A program's
// main calls [Worker.RunUntilSignal] instead: the first SIGINT or SIGTERM
// drains, a second cancels the running jobs and still reports their ends.
// [Worker.Subscribe] delivers what happens to each job as typed events.
// docs/lifecycle.md describes the states and the stop semantics.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/lkagent/lkagent/internal/config"
	"github.com/lkagent/lkagent/internal/restart"
	"github.com/lkagent/lkagent/internal/sdklog"
	"github.com/lkagent/lkagent/job"
)

// Worker is one registered agent worker. Create it with [New] and run it
// with [Worker.Run].
type Worker struct {
	o         Options
	handler   job.Handler
	log       *slog.Logger
	dialer    *websocket.Dialer
	agentURL  string    // the /agent endpoint
	base      time.Time // timing base for JobJoinTiming
	obs       *observer
	registry  *prometheus.Registry            // the worker's own: its collectors, Go's and the process's
	loads     *loadSampler                    // nil without Options.LoadFunc
	restarter *restart.Restarter              // nil with Restart.Disabled
	hookRest  *restart.Restarter              // the webhook's, with Options.Webhook
	webhook   atomic.Pointer[restart.Webhook] // the current run's webhook receiver
	heldSweep *heldState                      // nil with Held.Disabled (held.go)
	exec      jobRunner                       // where jobs run: Options.Executor's strategy
	warm      warmState                       // what Options.Prewarm made (prewarm.go)
	tracing   tracing                         // the jobs' tracer (trace.go)
	// statusDelay is StatusDelay; tests against a fake without the
	// server's race set it to 0.
	statusDelay time.Duration

	runMu   sync.Mutex  // held from Start until the run ended
	running atomic.Bool // a run is on (for /healthz)

	mu        sync.Mutex
	run       *runState // the current or last run; nil before the first
	draining  bool
	sess      *session // registered session, nil while disconnected
	workerID  string
	connected bool
	gaveUp    bool
	hint      string   // why registrations keep failing, for /readyz; "" when nothing is known
	table     jobTable // the jobs, from their reservation to their end (jobtable.go)
	held      int      // job statuses held back by their StatusDelay
	seq       uint64
	lastLoop  time.Time // last time a worker loop turned (for /healthz)
	httpAddr  string    // bound address of the HTTP endpoints

	events eventHub // job events to the subscriptions

	jobWG  sync.WaitGroup // job handler goroutines
	userWG sync.WaitGroup // OnRequest calls
	bg     sync.WaitGroup // offer answers and deferred log lines
}

// New validates opts (filling empty fields from the environment and the
// defaults) and returns a worker that runs handler for each job it takes.
func New(opts Options, handler job.Handler) (*Worker, error) {
	return newWorker(opts, handler, osGetenv)
}

func newWorker(opts Options, handler job.Handler, getenv func(string) string) (_ *Worker, err error) {
	defer func() { config.Attribute(err, "worker") }() // every OptionError says it is the worker's
	if handler == nil {
		return nil, &OptionError{Option: "handler", Rule: "required: pass the job handler to worker.New"}
	}
	o, err := opts.withDefaults(getenv)
	if err != nil {
		return nil, err
	}
	w := &Worker{
		o:       o,
		handler: handler,
		dialer: &websocket.Dialer{
			HandshakeTimeout: o.RegisterTimeout,
			Proxy:            websocket.DefaultDialer.Proxy,
		},
		agentURL:    agentURL(o.URL),
		base:        time.Now(),
		loads:       newLoadSampler(o.LoadFunc),
		statusDelay: StatusDelay,
		table:       newJobTable(4096),
	}
	w.log = o.Logger.With(slog.String("agent_name", o.AgentName), slog.String("deployment", o.Deployment))
	if o.Executor == nil {
		o.Executor = InProcess()
	}
	w.exec = o.Executor.runner(w)
	if !o.KeepSDKLogger {
		sdklog.Install(o.Logger.With(slog.String("component", "livekit-sdk")))
	}
	w.obs = newObserver(o)
	// The worker's own registry always exists, so /metrics works whatever
	// Options.Registerer is (a wrapping Registerer is no Gatherer).
	w.registry = prometheus.NewRegistry()
	if err := w.registry.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("worker: register metrics: %w", err)
	}
	if err := w.registry.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("worker: register metrics: %w", err)
	}
	if err := w.obs.m.Register(w.registry); err != nil {
		return nil, fmt.Errorf("worker: register metrics: %w", err)
	}
	if o.Registerer != nil {
		if err := w.obs.m.Register(o.Registerer); err != nil {
			return nil, fmt.Errorf("worker: register metrics with Options.Registerer: %w", err)
		}
	}
	if !o.Restart.Disabled || o.Webhook {
		r, err := w.newRestarter()
		if err != nil {
			return nil, &OptionError{Option: "Restart", Rule: err.Error()}
		}
		if !o.Restart.Disabled {
			w.restarter = r
		}
		if o.Webhook {
			w.hookRest = r
		}
	}
	if w.heldSweep, err = w.newHeld(); err != nil { // held dispatches (held.go)
		return nil, err
	}
	return w, nil
}

// Run connects, registers and serves jobs until ctx ends, reconnecting
// whenever the connection is lost (a lost connection never ends a job).
// When ctx ends it drains: it tells the server it is full, declines new
// offers, waits up to DrainTimeout for running and queued jobs, cancels
// the rest (waiting up to ShutdownTimeout), reports their final status and
// closes the connection. Run is [Worker.Start], then [Worker.Stop] with
// DrainTimeout once ctx ends, even if it ends while the worker registers
// (the server may assign jobs before Start would have returned).
//
// Run returns nil after a drain. It returns an error only when the
// connection cannot be restored, after letting running jobs end (up to
// DrainTimeout, as in a drain): an error wrapping ErrUnauthorized (wrong
// key or secret), ErrMisconfigured (the URL is no LiveKit agent endpoint)
// or ErrGaveUp (MaxRetry attempts in a row failed; it also wraps the last
// attempt's error, which may wrap ErrRegistrationRefused). A second Run
// while one runs returns ErrAlreadyRunning; a worker can Run again after
// Run returned. Bad options are reported by [New], never by Run, except
// an HTTPAddr that cannot be bound.
//
// In a job process (see [Processes]) Run serves the one job the process
// was started for and returns [ErrJobProcessDone]; the program's main
// then exits.
func (w *Worker) Run(ctx context.Context) error {
	// The server may assign jobs as soon as it answered the registration,
	// before Start sees it: ctx ending even then drains.
	drain := func() {
		dctx, cancel := context.WithTimeout(context.Background(), w.o.DrainTimeout)
		defer cancel()
		_ = w.Stop(dctx) // a drain that ran out of time is logged, not an error of Run
	}
	if err := w.startRun(ctx, drain); err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil // stopped before or while it registered, and drained
		}
		return err
	}
	select {
	case <-ctx.Done():
		drain()
		return w.Err()
	case <-w.Done():
		return w.Err()
	}
}

// Start starts the worker and returns once it is registered with the
// server (and Options.OnStateChange was told so). It returns the error that stops the worker if that comes first
// (ErrUnauthorized, ErrMisconfigured, ErrGaveUp, or an HTTPAddr that
// cannot be bound), or ctx's error if ctx ends first (the worker is then
// stopped). ctx bounds the wait only; its values reach every job. The
// worker runs until [Worker.Stop] or [Worker.StopAndCancel], or until the
// connection cannot be restored ([Worker.Done] and [Worker.Err] tell).
// Start while the worker runs returns ErrAlreadyRunning. In a job process
// (see [Processes]) Start serves the job, as Run does, and returns
// [ErrJobProcessDone].
func (w *Worker) Start(ctx context.Context) error {
	return w.startRun(ctx, func() { _ = w.StopAndCancel(context.Background()) })
}

// startRun starts the worker and waits until it is registered; if ctx ends
// first, it stops the worker with stop.
func (w *Worker) startRun(ctx context.Context, stop func()) error {
	if w.exec.child() {
		return w.serveJobProcess(ctx) // ErrJobProcessDone: main exits
	}
	if !w.runMu.TryLock() {
		return ErrAlreadyRunning
	}
	closeExec, err := w.exec.open(ctx)
	if err != nil {
		w.runMu.Unlock()
		return err
	}
	rs, err := w.begin(ctx, closeExec)
	if err != nil {
		closeExec()
		w.runMu.Unlock()
		return err
	}
	select {
	case <-rs.registered:
		return nil
	case <-rs.done:
		return rs.err
	case <-ctx.Done():
		stop()
		return fmt.Errorf("worker: start: not registered yet: %w", ctx.Err())
	}
}

// Stop drains the worker and stops it: it declines new offers, lets
// running and queued jobs end until ctx is done, then cancels what is
// left with job.ErrDrainTimeout (waiting up to ShutdownTimeout for the
// handlers), reports the final statuses and closes the connection. It
// returns once the worker stopped: nil if every job ended on its own,
// else an error wrapping ctx's error (or job.ErrWorkerStopped when a
// StopAndCancel cut the drain short). Stopping a worker that is not
// running returns nil.
//
// Stop requests add up: while a worker stops (after a Stop, or on its own
// once the connection could not be restored), a later Stop with an
// earlier deadline ends the drain at that deadline, and a StopAndCancel
// cancels at once. A later request never makes a stop softer or later.
func (w *Worker) Stop(ctx context.Context) error { return w.stop(ctx, false) }

// StopAndCancel stops the worker at once: it cancels running jobs with
// job.ErrWorkerStopped and fails queued ones, waits for the handlers until
// ctx is done (and no longer than ShutdownTimeout), reports the final
// statuses and closes the connection. Called while a [Worker.Stop] drains,
// it ends that drain now: a program's second SIGTERM.
func (w *Worker) StopAndCancel(ctx context.Context) error { return w.stop(ctx, true) }

// Done is closed when the worker stopped: after Stop or StopAndCancel, or
// on its own when the connection cannot be restored (see Err). Before the
// first Start it is closed.
func (w *Worker) Done() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.run == nil {
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	return w.run.done
}

// Err is why the worker stopped on its own (ErrUnauthorized,
// ErrMisconfigured, ErrGaveUp), once Done is closed; nil when it was
// stopped by Stop or StopAndCancel, or while it runs.
func (w *Worker) Err() error {
	w.mu.Lock()
	rs := w.run
	w.mu.Unlock()
	if rs == nil {
		return nil
	}
	select {
	case <-rs.done:
		return rs.err
	default:
		return nil
	}
}

// runState is one run of the worker, from Start to its end.
type runState struct {
	registered   chan struct{} // closed on the first registration
	regOnce      sync.Once
	stops        *stopRequests
	done         chan struct{}   // closed once everything stopped
	restarts     context.Context // restarts of failed jobs' agents; cancelled once the jobs ended
	stopRestarts context.CancelFunc
	err          error // why the worker stopped on its own; set before done closes
	// cancelled: jobs were cancelled rather than ending on their own, in
	// a shutdown a stop request took part in; set before done closes.
	cancelled bool
}

// begin starts a run: the HTTP endpoints, the load sampler, the
// connection loop, and the goroutine that ends them all, closeExec
// included.
func (w *Worker) begin(ctx context.Context, closeExec func()) (*runState, error) {
	w.mu.Lock()
	w.draining, w.gaveUp, w.hint, w.lastLoop = false, false, "", time.Now()
	w.mu.Unlock()
	w.obs.setDraining(false)
	stopHTTP := func() {}
	if w.o.HTTPAddr != "" {
		ln, err := w.listenHTTP()
		if err != nil {
			return nil, err
		}
		w.log.Info("serving HTTP endpoints", slog.String("addr", ln.Addr().String()))
		stopHTTP = w.serveHTTP(ln)
	}
	closeWebhook := func() {}
	if w.hookRest != nil {
		wh := restart.NewWebhook(w.hookRest, restart.WebhookOptions{})
		w.webhook.Store(wh)
		closeWebhook = func() {
			w.webhook.Store(nil)
			ctx, cancel := context.WithTimeout(context.Background(), w.o.ShutdownTimeout)
			defer cancel()
			_ = wh.Close(ctx) // restarts under way finish, or are cancelled
		}
	}
	rs := &runState{registered: make(chan struct{}), stops: newStopRequests(), done: make(chan struct{})}
	rs.restarts, rs.stopRestarts = context.WithCancel(context.WithoutCancel(ctx))
	w.mu.Lock()
	w.run = rs
	w.mu.Unlock()
	w.running.Store(true)

	// The connection outlives ctx: the drain still needs it. Jobs keep
	// ctx's values, not its cancellation.
	connCtx, stopConn := context.WithCancel(context.WithoutCancel(ctx))
	jobCtx, cancelJobs := context.WithCancelCause(context.WithoutCancel(ctx))
	stopLoads := func() {}
	if w.loads != nil {
		loadCtx, cancel := context.WithCancel(connCtx)
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			w.loads.run(loadCtx, w.log, w.kickStatus)
		}()
		stopLoads = func() {
			cancel()
			w.waitUser(sampled, "LoadFunc")
		}
	}
	connDone := make(chan error, 1)
	go func() { connDone <- w.connectLoop(connCtx, jobCtx) }()
	heldDone := make(chan struct{}) // held dispatches (held.go): sweeps until the connection stops
	go func() { defer close(heldDone); w.runHeld(connCtx) }()

	go func() {
		var connErr error
		select {
		case <-rs.stops.requested:
		case connErr = <-connDone:
			connDone = nil
		}
		drained := w.shutdown(rs, connErr)
		select {
		case <-rs.stops.requested:
			rs.cancelled = !drained
		default: // stopped on its own, and nobody asked
		}
		stopConn()
		<-heldDone
		if connDone != nil {
			<-connDone
		}
		cancelJobs(job.ErrWorkerStopped)
		rs.stopRestarts() // those still waiting; a claimed one finishes
		w.waitOnRequests()
		w.bg.Wait()
		closeWebhook()
		closeExec()
		stopLoads()
		stopHTTP()
		rs.err = connErr
		w.running.Store(false)
		w.runMu.Unlock() // before done: a Start after Stop returned must not find the worker running
		close(rs.done)
		rs.stops.release()
	}()
	return rs, nil
}

// stop asks the current run to stop (draining until ctx ends, or at once)
// and waits for it. A request made while the run already stops makes that
// stop harder and sooner, never softer or later: see stopRequests.
func (w *Worker) stop(ctx context.Context, now bool) error {
	w.mu.Lock()
	rs := w.run
	w.mu.Unlock()
	if rs == nil {
		return nil
	}
	select {
	case <-rs.done:
		return nil // stopped already
	default:
	}
	release := rs.stops.add(ctx, now)
	<-rs.done
	release()
	if now || !rs.cancelled {
		return nil
	}
	why := ctx.Err()
	if why == nil { // another request ended the drain
		why = context.Cause(rs.stops.drain)
	}
	return fmt.Errorf("worker: stop: jobs were still running: %w", why)
}

// registeredOnce marks the current run registered.
func (w *Worker) registeredOnce() {
	w.kickHeld(true) // held dispatches (held.go): look for them on every registration
	w.mu.Lock()
	rs := w.run
	w.mu.Unlock()
	if rs != nil {
		rs.regOnce.Do(func() { close(rs.registered) })
	}
}

// waitOnRequests waits for OnRequest calls still running, up to
// ShutdownTimeout: a call that ignores its context is left behind.
func (w *Worker) waitOnRequests() {
	done := make(chan struct{})
	go func() {
		w.userWG.Wait()
		close(done)
	}()
	w.waitUser(done, "OnRequest")
}

// waitUser waits up to ShutdownTimeout for user code (what) to return,
// signalled by done; code that does not is left behind, and said so.
func (w *Worker) waitUser(done <-chan struct{}, what string) {
	t := time.NewTimer(w.o.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		w.log.Error(what+" did not return within the shutdown timeout; leaving it behind",
			slog.Duration("shutdown_timeout", w.o.ShutdownTimeout))
	}
}

// shutdown ends the jobs of a run that is stopping, and reports whether
// they all ended on their own. A stop request drains until its context
// ends (or cancels at once); when the connection cannot be restored
// (connErr) it drains up to DrainTimeout: jobs do not need the connection
// to go on, and end with their rooms.
func (w *Worker) shutdown(rs *runState, connErr error) bool {
	w.setDraining(true)
	dctx := rs.stops.drain
	if connErr != nil {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(dctx, w.o.DrainTimeout)
		defer cancel()
	}
	if n := w.runningJobs(); n > 0 && !rs.stops.cancelNow() {
		if connErr != nil {
			w.log.Error("the connection to the server cannot be restored; letting running jobs end before the worker stops",
				slog.Int("running_jobs", n), slog.Duration("drain_timeout", w.o.DrainTimeout), slog.Any("error", connErr))
		} else {
			w.log.Info("draining", slog.Int("running_jobs", n))
		}
		w.waitJobs(dctx)
	}
	// Read after the drain: a StopAndCancel that ended it is why.
	now := rs.stops.cancelNow()
	cause := job.ErrDrainTimeout
	if now {
		cause = job.ErrWorkerStopped
	}
	n := w.cancelAllJobs(cause)
	if n > 0 {
		w.log.Warn("cancelling running jobs", slog.Int("jobs", n), slog.Any("cause", cause))
		// A StopAndCancel's context ending ends this wait too.
		sctx, cancel := context.WithTimeout(rs.stops.handlers, w.o.ShutdownTimeout)
		if !w.waitJobs(sctx) {
			w.log.Error("job handlers did not return within the shutdown timeout; leaving them behind",
				slog.Int("jobs", w.runningJobs()), slog.Duration("shutdown_timeout", w.o.ShutdownTimeout))
		}
		cancel()
	}
	// Give the final statuses a moment to reach the server.
	fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	w.flushOutbox(fctx)
	cancel()
	return n == 0
}

// Drain makes the worker stop taking jobs (it reports itself full and
// declines offers) and waits until its running jobs ended or ctx is done.
// The worker stays connected; Run keeps going until its own context ends.
// Drain returns ctx's error if jobs were still running.
func (w *Worker) Drain(ctx context.Context) error {
	w.setDraining(true)
	if !w.waitJobs(ctx) {
		return fmt.Errorf("worker: drain: %d jobs still running: %w", w.runningJobs(), ctx.Err())
	}
	return nil
}

func (w *Worker) setDraining(v bool) {
	w.mu.Lock()
	changed := w.draining != v
	w.draining = v
	s := w.sess
	w.mu.Unlock()
	if changed {
		w.obs.setDraining(v)
		if s != nil {
			s.kickStatus()
		}
	}
}

func (w *Worker) runningJobs() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.table.assigned()
}

// waitJobs waits until no job runs; false if ctx ended first.
func (w *Worker) waitJobs(ctx context.Context) bool {
	for {
		w.mu.Lock()
		n, ch := w.table.assigned(), w.table.changed
		w.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// cancelAllJobs cancels running jobs with cause and fails queued ones,
// which will never start; it returns how many jobs there were.
func (w *Worker) cancelAllJobs(cause error) int {
	w.mu.Lock()
	n := w.table.assigned()
	queued := append([]*activeJob(nil), w.table.queue...)
	for _, a := range queued {
		w.unqueueLocked(a)
	}
	for _, a := range w.table.jobs {
		a.cancel(cause)
	}
	w.mu.Unlock()
	for _, a := range queued {
		w.failQueued(a, fmt.Errorf("job not started: %w", cause), StatusDrainTimeout)
	}
	return n
}

// flushOutbox waits until the job statuses for the current connection
// were written (those held back by their StatusDelay included), while a
// connection is up, or ctx ends.
func (w *Worker) flushOutbox(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		w.mu.Lock()
		n, s := w.held, w.sess
		if s != nil {
			n += len(s.outbox) + s.writing
		}
		w.mu.Unlock()
		if n == 0 || s == nil {
			if n > 0 {
				w.log.Warn("job statuses not delivered: not connected", slog.Int("statuses", n))
			}
			return
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			w.log.Warn("job statuses not delivered in time", slog.Int("statuses", n))
			return
		}
	}
}

// Gatherer returns the worker's own registry: its collectors, plus Go's
// and the process's. /metrics serves it. The worker's collectors are also
// registered with Options.Registerer when one is set.
func (w *Worker) Gatherer() prometheus.Gatherer { return w.registry }

var errStopped = errors.New("worker stopped")

// restartCtx is the context restarts of the current run are made with.
func (w *Worker) restartCtx() context.Context {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.run == nil {
		return context.Background()
	}
	return w.run.restarts
}
