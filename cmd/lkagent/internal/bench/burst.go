package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	dto "github.com/prometheus/client_model/go"

	"github.com/lkagent/lkagent/dispatch"
	"github.com/lkagent/lkagent/internal/lkurl"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/metrics"
	"github.com/lkagent/lkagent/worker"
)

// BurstConfig says what a burst measures: Jobs dispatches created at once,
// each to a room of its own, taken by workers with a capacity (MaxJobs) and
// an admission queue (MaxQueued, QueueTimeout). Each job's handler holds
// for Hold and returns; handlers do not join their rooms.
type BurstConfig struct {
	URL, APIKey, APISecret string
	// AgentName of the workers; default a random "burst-…".
	AgentName string
	// Deployments served; default "staging" alone. Dispatches alternate
	// between them.
	Deployments []string
	// WorkersPerDeployment; default 1.
	WorkersPerDeployment int
	// Jobs is how many dispatches are created at once; default 300.
	Jobs int
	// MaxJobs, MaxQueued and QueueTimeout are the workers' options of the
	// same names (zero: the worker's defaults).
	MaxJobs      int
	MaxQueued    int
	QueueTimeout time.Duration
	// Hold is how long each job's handler runs; default 2s.
	Hold time.Duration
	// LostAfter: a job that has not started this long after the last
	// dispatch was created is lost. Default: the queue timeout plus Hold
	// plus a minute.
	LostAfter time.Duration
	// Quiet ends the wait for jobs sooner: when nothing happened for this
	// long (no offer, no handler start) and no job waits in a queue, no
	// more jobs are coming. Default 15s.
	Quiet time.Duration
	// NoHeld turns the workers' held dispatches off (worker.Options.Held):
	// a job the server dropped then stays lost, as with a worker of
	// another SDK.
	NoHeld bool
	// Settle is how long the burst waits after the workers registered;
	// default lkserver.RegistrationSettle. After a worker registers, the
	// server rebuilds its cache of agent names, which holds every job
	// request made meanwhile for up to 5 s (each waits in the server's
	// pool of 50): a Settle above 5 s measures dispatching with a warm
	// cache.
	Settle time.Duration
	// Via is how the dispatches are created: ViaCreateDispatch (default),
	// the server's CreateDispatch, which creates a new room with the
	// default configuration (and so an automatic agent job too), or
	// ViaClient, dispatch.Client, which creates it with the dispatch in its
	// configuration.
	Via string
	// Progress receives a line now and then; nil for none.
	Progress io.Writer
	// Logger for the workers; nil discards.
	Logger *slog.Logger
}

// Values of BurstConfig.Via.
const (
	ViaCreateDispatch = "create-dispatch"
	ViaClient         = "client"
)

// Defaults of BurstConfig.
const (
	DefaultBurstJobs  = 300
	DefaultBurstHold  = 2 * time.Second
	DefaultBurstQuiet = 15 * time.Second
	// dispatchTimeout bounds one CreateDispatch; a burst makes the server
	// slow to answer.
	dispatchTimeout = 2 * time.Minute
)

func (c *BurstConfig) defaults() error {
	if c.AgentName == "" {
		c.AgentName = fmt.Sprintf("burst-%d", time.Now().UnixNano()%1_000_000)
	}
	if len(c.Deployments) == 0 {
		c.Deployments = []string{"staging"}
	}
	for _, d := range c.Deployments {
		if strings.Contains(d, "_") {
			return fmt.Errorf("bench: deployment %q: '_' is reserved", d)
		}
	}
	if c.WorkersPerDeployment <= 0 {
		c.WorkersPerDeployment = 1
	}
	switch c.Via {
	case "":
		c.Via = ViaCreateDispatch
	case ViaCreateDispatch, ViaClient:
	default:
		return fmt.Errorf("bench: Via %q: want %q or %q", c.Via, ViaCreateDispatch, ViaClient)
	}
	if c.Jobs <= 0 {
		c.Jobs = DefaultBurstJobs
	}
	if c.MaxJobs < 0 || c.MaxQueued < -1 || c.QueueTimeout < 0 || c.Hold < 0 || c.LostAfter < 0 || c.Quiet < 0 {
		return errors.New("bench: MaxJobs, QueueTimeout, Hold, LostAfter and Quiet must not be negative, MaxQueued not below -1")
	}
	if c.Hold == 0 {
		c.Hold = DefaultBurstHold
	}
	if c.LostAfter == 0 {
		c.LostAfter = c.queueTimeout() + c.Hold + time.Minute
	}
	if c.Quiet == 0 {
		c.Quiet = DefaultBurstQuiet
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// queueTimeout is the QueueTimeout the workers apply.
func (c *BurstConfig) queueTimeout() time.Duration {
	if c.QueueTimeout == 0 {
		return worker.DefaultQueueTimeout
	}
	return c.QueueTimeout
}

// queueCap is the MaxQueued the workers apply.
func (c *BurstConfig) queueCap() int {
	switch {
	case c.MaxJobs == 0 || c.MaxQueued < 0:
		return 0
	case c.MaxQueued == 0:
		return c.MaxJobs
	}
	return c.MaxQueued
}

// BurstReport is what a burst measured. Ran, Lost and RunTwice count
// rooms: each dispatch has a room of its own.
type BurstReport struct {
	AgentName            string   `json:"agent_name"`
	Deployments          []string `json:"deployments"`
	WorkersPerDeployment int      `json:"workers_per_deployment"`
	MaxJobs              int      `json:"max_jobs"`
	MaxQueued            int      `json:"max_queued"`
	QueueTimeoutMS       float64  `json:"queue_timeout_ms"`
	HoldMS               float64  `json:"hold_ms"`
	LostAfterMS          float64  `json:"lost_after_ms"`
	// Via is how the dispatches were created (BurstConfig.Via).
	Via string `json:"via"`

	// Jobs dispatches were attempted at once; Dispatched were created.
	Jobs           int `json:"jobs"`
	Dispatched     int `json:"dispatched"`
	DispatchErrors int `json:"dispatch_errors"`
	// Ran: created dispatches whose handler started in time; Lost: the
	// others. RunTwice counts extra handler starts for one room.
	Ran      int `json:"ran"`
	Lost     int `json:"lost"`
	RunTwice int `json:"run_twice"`
	// LateStarts started after the wait had ended (counted lost).
	LateStarts int `json:"late_starts"`
	// RoutingViolations: jobs run by a worker of another deployment.
	RoutingViolations int `json:"routing_violations"`
	// QueueTimeouts: queued jobs failed after QueueTimeout, by the
	// workers' metrics.
	QueueTimeouts int `json:"queue_timeouts"`
	// Workers, in the order they were started.
	Workers []BurstWorker `json:"workers"`

	// DispatchingMS is from the first CreateDispatch sent to the last
	// answered.
	DispatchingMS float64 `json:"dispatching_ms"`
	// FirstDispatchToLastStartMS is from the first CreateDispatch sent to
	// the last handler start.
	FirstDispatchToLastStartMS float64 `json:"first_dispatch_to_last_start_ms"`
	// DispatchToOffer is from the dispatches being sent to each offer
	// reaching OnRequest: the server's part.
	DispatchToOffer Latency `json:"dispatch_to_offer"`
	// DispatchToStart is from the dispatches being sent to each handler
	// start.
	DispatchToStart Latency `json:"dispatch_to_start"`
	// QueueWait is, for every job that ran, from its offer being accepted
	// (in OnRequest) to its handler start: the time it waited for a slot,
	// plus the assignment's trip. QueueWaitMeasure says so.
	QueueWait        Latency `json:"queue_wait"`
	QueueWaitMeasure string  `json:"queue_wait_measure"`
	// WaitEnded says why the bench stopped waiting for jobs.
	WaitEnded string        `json:"wait_ended"`
	Duration  time.Duration `json:"duration_ns"`
}

// BurstWorker is one worker's share of a burst.
type BurstWorker struct {
	WorkerID   string `json:"worker_id"`
	Deployment string `json:"deployment"`
	// Ran counts the handlers it started (late ones included).
	Ran int `json:"ran"`
	// PeakRunning is the most handlers running at once, counted by the
	// handlers themselves.
	PeakRunning int `json:"peak_running"`
	// From the worker's metrics: offers received and declined, jobs that
	// went through its queue, and queued jobs that timed out.
	Offers        int `json:"offers"`
	Declined      int `json:"declined"`
	Queued        int `json:"queued"`
	QueueTimeouts int `json:"queue_timeouts"`
}

// Failed says what went wrong, or nil: a lost job, a job run twice, a
// dispatch that could not be created or a job run by a worker of another
// deployment.
func (r *BurstReport) Failed() error {
	var errs []string
	add := func(n int, what string) {
		if n > 0 {
			errs = append(errs, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(r.Lost, "jobs lost")
	add(r.RunTwice, "jobs run twice")
	add(r.DispatchErrors, "dispatches failed")
	add(r.RoutingViolations, "routing violations")
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, ", "))
}

// queueWaitMeasure describes BurstReport.QueueWait.
const queueWaitMeasure = "offer accepted (OnRequest) → handler start, measured by the bench"

// burst is the state of one RunBurst.
type burst struct {
	cfg     BurstConfig
	workers []*burstWorker // fixed once the workers started

	mu        sync.Mutex
	accepted  map[string]time.Time    // job id → offer accepted
	starts    map[string][]burstStart // room → handler starts
	lastEvent time.Time               // last offer or handler start
	closed    bool                    // the wait ended: later starts are late
}

type burstWorker struct {
	deployment string
	w          *worker.Worker
	id         string // the server's id for its first registration
	running    int    // guarded by burst.mu
	peak       int    // guarded by burst.mu
	ran        int    // guarded by burst.mu
}

type burstStart struct {
	worker     int
	jobID      string
	deployment string // the job's
	at         time.Time
	late       bool
}

// dispatched is the outcome of the dispatching.
type dispatched struct {
	rooms       map[string]string // room → deployment, of the dispatches created
	errs        int
	firstErr    error
	first, last time.Time // first sent, last answered
}

// RunBurst creates cfg.Jobs dispatches at once and reports how the workers
// took them. The workers it starts are stopped (drained) before it
// returns.
func RunBurst(ctx context.Context, cfg BurstConfig) (*BurstReport, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	began := time.Now()
	b := &burst{cfg: cfg, accepted: map[string]time.Time{}, starts: map[string][]burstStart{}}
	wctx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	defer func() { stopWorkers(); wg.Wait() }()
	if err := b.startWorkers(ctx, wctx, &wg); err != nil {
		return nil, err
	}
	settle := cfg.Settle
	if settle <= 0 {
		settle = lkserver.RegistrationSettle
	}
	if err := sleep(ctx, settle); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Progress, "burst: %d dispatches at once…\n", cfg.Jobs)
	d := b.dispatch(ctx)
	if d.errs > 0 {
		fmt.Fprintf(cfg.Progress, "%d dispatches failed, the first: %v\n", d.errs, d.firstErr)
	}
	fmt.Fprintf(cfg.Progress, "%d dispatches created in %s; waiting for their jobs…\n",
		len(d.rooms), d.last.Sub(d.first).Round(time.Millisecond))
	ended, err := b.await(ctx, d)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Progress, "%s; stopping the workers…\n", ended)
	stopWorkers()
	wg.Wait()
	rep, err := b.report(d)
	if err != nil {
		return nil, err
	}
	rep.WaitEnded = ended
	rep.Duration = time.Since(began)
	return rep, nil
}

// sleep waits for d or ctx.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// startWorkers starts WorkersPerDeployment workers per deployment, which
// run until runCtx ends, and waits until each registered.
func (b *burst) startWorkers(ctx, runCtx context.Context, wg *sync.WaitGroup) error {
	c := &b.cfg
	fmt.Fprintf(c.Progress, "starting %d worker(s) per deployment for %s (MaxJobs %d, MaxQueued %d)…\n",
		c.WorkersPerDeployment, quoteAll(c.Deployments), c.MaxJobs, c.queueCap())
	for _, dep := range c.Deployments {
		for range c.WorkersPerDeployment {
			i := len(b.workers)
			bw := &burstWorker{deployment: dep}
			b.workers = append(b.workers, bw)
			w, err := startWorker(ctx, runCtx, wg, worker.Options{
				URL: c.URL, APIKey: c.APIKey, APISecret: c.APISecret,
				AgentName: c.AgentName, Deployment: dep, Logger: c.Logger,
				MaxJobs: c.MaxJobs, MaxQueued: c.MaxQueued, QueueTimeout: c.QueueTimeout,
				// Jobs still held when the wait ends finish; so may late ones.
				DrainTimeout: c.Hold + 10*time.Second,
				OnRequest:    b.onRequest,
				Held:         worker.HeldOptions{Disabled: c.NoHeld},
			}, b.handler(i))
			if err != nil {
				return err
			}
			bw.w, bw.id = w, w.Snapshot().WorkerID
		}
	}
	return nil
}

// onRequest accepts every offer and notes when.
func (b *burst) onRequest(_ context.Context, r *job.Request) error {
	now := time.Now()
	b.mu.Lock()
	b.accepted[r.ID()] = now
	b.lastEvent = now
	b.mu.Unlock()
	return r.Accept(job.AcceptOptions{})
}

// handler is worker i's: it counts itself running, holds, and returns.
func (b *burst) handler(i int) job.Handler {
	return func(ctx context.Context, j *job.Job) error {
		b.started(i, j)
		defer b.ended(i)
		t := time.NewTimer(b.cfg.Hold)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return nil
	}
}

func (b *burst) started(i int, j *job.Job) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.workers[i]
	w.running++
	w.ran++
	w.peak = max(w.peak, w.running)
	b.starts[j.RoomName()] = append(b.starts[j.RoomName()],
		burstStart{worker: i, jobID: j.ID(), deployment: j.Deployment(), at: now, late: b.closed})
	b.lastEvent = now
}

func (b *burst) ended(i int) {
	b.mu.Lock()
	b.workers[i].running--
	b.mu.Unlock()
}

// dispatch creates the dispatches, all released at the same instant, each
// for a room of its own, and waits for the server's answers.
func (b *burst) dispatch(ctx context.Context) dispatched {
	c := &b.cfg
	dc := lksdk.NewAgentDispatchServiceClient(lkurl.HTTP(c.URL), c.APIKey, c.APISecret)
	client := dispatch.NewClient(c.URL, c.APIKey, c.APISecret)
	type result struct {
		room, dep string
		err       error
		at        time.Time
	}
	results := make([]result, c.Jobs)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range c.Jobs {
		dep := c.Deployments[i%len(c.Deployments)]
		room := fmt.Sprintf("%s-%d", c.AgentName, i)
		wg.Go(func() {
			<-gate
			dctx, cancel := context.WithTimeout(ctx, dispatchTimeout)
			defer cancel()
			req := &livekit.CreateAgentDispatchRequest{AgentName: c.AgentName, Room: room, Deployment: dep}
			var err error
			if c.Via == ViaClient {
				_, err = client.Create(dctx, req)
			} else {
				_, err = dc.CreateDispatch(dctx, req)
			}
			results[i] = result{room: room, dep: dep, err: err, at: time.Now()}
		})
	}
	d := dispatched{rooms: map[string]string{}, first: time.Now()}
	close(gate)
	wg.Wait()
	for _, r := range results {
		d.last = maxTime(d.last, r.at)
		if r.err != nil {
			d.errs++
			if d.firstErr == nil {
				d.firstErr = fmt.Errorf("dispatch (%s) for room %s: %w", c.Via, r.room, r.err)
			}
			continue
		}
		d.rooms[r.room] = r.dep
	}
	b.mu.Lock()
	b.lastEvent = maxTime(b.lastEvent, d.last)
	b.mu.Unlock()
	return d
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// await waits until every dispatched job started, or LostAfter passed
// since the last dispatch was created, or nothing happened for Quiet with
// no job queued. It says which.
func (b *burst) await(ctx context.Context, d dispatched) (string, error) {
	bound := d.last.Add(b.cfg.LostAfter)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastLine := time.Now()
	for {
		started, last := b.progress(d.rooms)
		queued := b.queued()
		var ended string
		switch now := time.Now(); {
		case started == len(d.rooms):
			ended = "every job started"
		case now.After(bound):
			ended = fmt.Sprintf("%d jobs did not start within %s of the last dispatch", len(d.rooms)-started, b.cfg.LostAfter)
		case now.Sub(last) >= b.cfg.Quiet && queued == 0:
			ended = fmt.Sprintf("%d jobs never started: no offer and no start for %s, nothing queued", len(d.rooms)-started, b.cfg.Quiet)
		}
		if ended != "" {
			b.mu.Lock()
			b.closed = true
			b.mu.Unlock()
			return ended, nil
		}
		if time.Since(lastLine) >= 5*time.Second {
			lastLine = time.Now()
			fmt.Fprintf(b.cfg.Progress, "%d of %d jobs started, %d queued\n", started, len(d.rooms), queued)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-tick.C:
		}
	}
}

// progress is how many of rooms had a handler start, and the last event.
func (b *burst) progress(rooms map[string]string) (int, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for room := range rooms {
		if len(b.starts[room]) > 0 {
			n++
		}
	}
	return n, b.lastEvent
}

// queued is how many jobs wait in the workers' queues.
func (b *burst) queued() int {
	n := 0
	for _, w := range b.workers {
		n += w.w.Snapshot().Queued
	}
	return n
}

// report puts the figures together once the workers stopped.
func (b *burst) report(d dispatched) (*BurstReport, error) {
	c := &b.cfg
	rep := &BurstReport{
		AgentName: c.AgentName, Deployments: c.Deployments, WorkersPerDeployment: c.WorkersPerDeployment,
		MaxJobs: c.MaxJobs, MaxQueued: c.queueCap(), QueueTimeoutMS: ms(c.queueTimeout()), HoldMS: ms(c.Hold),
		LostAfterMS: ms(c.LostAfter), Jobs: c.Jobs, Dispatched: len(d.rooms), DispatchErrors: d.errs,
		DispatchingMS: ms(d.last.Sub(d.first)), QueueWaitMeasure: queueWaitMeasure, Via: c.Via,
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var toOffer, toStart, waits []time.Duration
	var lastStart time.Time
	for room, dep := range d.rooms {
		starts := b.starts[room]
		rep.RunTwice += max(len(starts)-1, 0)
		onTime := slices.IndexFunc(starts, func(s burstStart) bool { return !s.late }) >= 0
		if onTime {
			rep.Ran++
		} else {
			rep.Lost++
		}
		for _, s := range starts {
			if s.late {
				rep.LateStarts++
				continue
			}
			if b.workers[s.worker].deployment != dep || s.deployment != dep {
				rep.RoutingViolations++
			}
			lastStart = maxTime(lastStart, s.at)
			toStart = append(toStart, s.at.Sub(d.first))
			if acc, ok := b.accepted[s.jobID]; ok {
				toOffer = append(toOffer, acc.Sub(d.first))
				waits = append(waits, s.at.Sub(acc))
			}
		}
	}
	if !lastStart.IsZero() {
		rep.FirstDispatchToLastStartMS = ms(lastStart.Sub(d.first))
	}
	rep.DispatchToOffer, rep.DispatchToStart, rep.QueueWait = summarize(toOffer), summarize(toStart), summarize(waits)
	for _, w := range b.workers {
		bw, err := workerFigures(w)
		if err != nil {
			return nil, err
		}
		rep.QueueTimeouts += bw.QueueTimeouts
		rep.Workers = append(rep.Workers, bw)
	}
	return rep, nil
}

// workerFigures is one worker's share: its own handlers' counts and its
// metrics. b.mu is held.
func workerFigures(w *burstWorker) (BurstWorker, error) {
	bw := BurstWorker{WorkerID: w.id, Deployment: w.deployment, Ran: w.ran, PeakRunning: w.peak}
	m, err := gatherWorker(w.w)
	if err != nil {
		return bw, err
	}
	bw.Offers, bw.Declined, bw.Queued, bw.QueueTimeouts = m.offers, m.declined, m.queued, m.queueTimeouts
	return bw, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// workerMetrics are the figures a burst reads from a worker's metrics.
type workerMetrics struct {
	offers, declined, queued, queueTimeouts int
}

// gatherWorker reads w's metrics: offers received and declined (any
// reason), samples of the queue wait histogram (jobs that went through
// the queue) and jobs finished with status queue_timeout.
func gatherWorker(w *worker.Worker) (workerMetrics, error) {
	var m workerMetrics
	families, err := w.Gatherer().Gather()
	if err != nil {
		return m, fmt.Errorf("bench: gather worker metrics: %w", err)
	}
	for _, f := range families {
		for _, s := range f.GetMetric() {
			switch f.GetName() {
			case metrics.OffersReceived:
				m.offers += int(s.GetCounter().GetValue())
			case metrics.OffersDeclined:
				m.declined += int(s.GetCounter().GetValue())
			case metrics.QueueWait:
				m.queued += int(s.GetHistogram().GetSampleCount())
			case metrics.JobsFinished:
				if hasLabel(s.GetLabel(), metrics.LabelStatus, string(worker.StatusQueueTimeout)) {
					m.queueTimeouts += int(s.GetCounter().GetValue())
				}
			}
		}
	}
	return m, nil
}

func hasLabel(labels []*dto.LabelPair, name, value string) bool {
	return slices.ContainsFunc(labels, func(l *dto.LabelPair) bool { return l.GetName() == name && l.GetValue() == value })
}
