// Package bench measures lkagent workers against a LiveKit server: the
// latencies a user feels, throughput, memory per job, and, in the same
// run, that every job ran on a worker of its own deployment. The lkagent
// CLI's bench command prints its Report.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"golang.org/x/sync/errgroup"

	"github.com/lkagent/lkagent/internal/lkurl"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/procmem"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// Config says what to measure and where.
type Config struct {
	URL, APIKey, APISecret string
	// AgentName of the bench workers; default a random "bench-…".
	AgentName string
	// Deployments served; default production ("") and "staging".
	Deployments []string
	// WorkersPerDeployment; default 1.
	WorkersPerDeployment int
	// Jobs dispatched in each of the sequential and the concurrent phase;
	// default 20.
	Jobs int
	// Concurrency of the concurrent phase; default 10.
	Concurrency int
	// JobType of the workers; default JT_ROOM.
	JobType livekit.JobType
	// SkipJoin keeps handlers out of their rooms. By default they join,
	// and the latency until an observer sees the agent is measured too.
	SkipJoin bool
	// MemoryJobs is how many jobs are held running at once to measure
	// memory per job; default 50.
	MemoryJobs int
	// Processes runs the workers with the Processes executor: each job in
	// a process of its own, the running program started again. Its main
	// must then serve job processes: see IsJobProcess. Memory is then also
	// measured per job process.
	Processes bool
	// Idle is the warm job processes each worker keeps with Processes
	// (ProcessOptions.Idle); 0 = the worker's default.
	Idle int
	// Progress receives a line per phase; nil for none.
	Progress io.Writer
	// Logger for the workers; nil discards.
	Logger *slog.Logger
}

func (c *Config) defaults() {
	if c.AgentName == "" {
		c.AgentName = fmt.Sprintf("bench-%d", time.Now().UnixNano()%1_000_000)
	}
	if len(c.Deployments) == 0 {
		c.Deployments = []string{"", "staging"}
	}
	if c.WorkersPerDeployment <= 0 {
		c.WorkersPerDeployment = 1
	}
	if c.Jobs <= 0 {
		c.Jobs = 20
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 10
	}
	if c.MemoryJobs <= 0 {
		c.MemoryJobs = 50
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Latency summarises samples in milliseconds.
type Latency struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P95 float64 `json:"p95_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(p float64) float64 {
		i := int(p*float64(len(s))+0.5) - 1
		i = min(max(i, 0), len(s)-1)
		return float64(s[i].Microseconds()) / 1000
	}
	return Latency{N: len(s), P50: q(0.5), P95: q(0.95), P99: q(0.99), Max: float64(s[len(s)-1].Microseconds()) / 1000}
}

// Phase is one dispatch phase's figures.
type Phase struct {
	Concurrency int `json:"concurrency"`
	Jobs        int `json:"jobs"`
	Errors      int `json:"errors"`
	// ErrorTexts are the distinct errors of the phase, each with how often
	// it happened, so that an error is never only a count.
	ErrorTexts []string `json:"error_texts,omitempty"`
	// DispatchToOffer is the server's part: CreateDispatch sent to the
	// offer reaching the worker.
	DispatchToOffer Latency `json:"dispatch_to_offer"`
	// OfferToHandler is the worker's part: offer received to handler start.
	OfferToHandler Latency `json:"offer_to_handler"`
	// DispatchToHandler is CreateDispatch sent to handler start.
	DispatchToHandler Latency `json:"dispatch_to_handler"`
	// DispatchToVisible is CreateDispatch sent to an observer in the room
	// seeing the agent participant (only with rooms joined).
	DispatchToVisible Latency `json:"dispatch_to_visible,omitempty"`
	// JobsPerSecond accepted (handler started) and completed.
	AcceptedPerSecond  float64 `json:"accepted_per_second"`
	CompletedPerSecond float64 `json:"completed_per_second"`
}

// Memory is resident memory of this process, the workers' process.
type Memory struct {
	IdleRSSBytes        uint64 `json:"idle_rss_bytes"`
	Jobs                int    `json:"jobs"`
	RSSWithJobsBytes    uint64 `json:"rss_with_jobs_bytes"`
	PerJobBytes         int64  `json:"per_job_bytes"`
	RSSWithJoinedBytes  uint64 `json:"rss_with_joined_jobs_bytes,omitempty"`
	PerJoinedJobBytes   int64  `json:"per_joined_job_bytes,omitempty"`
	GoroutinesIdle      int    `json:"goroutines_idle"`
	GoroutinesAfterJobs int    `json:"goroutines_after_jobs"`
	HeapIdleBytes       uint64 `json:"heap_idle_bytes"`
	HeapAfterJobsBytes  uint64 `json:"heap_after_jobs_bytes"`
	HeapPerRunningJobB  int64  `json:"heap_per_running_job_bytes"`
	// With Processes, the figures above are the worker's process alone;
	// these are the mean resident memory of a job process: warm (started,
	// waiting for a job), running a job without a room, and with its job
	// in a room. RSS counts the pages of the executable, which all job
	// processes share; PSS counts each process's share of them.
	JobProcessIdleRSSBytes   int64 `json:"job_process_idle_rss_bytes,omitempty"`
	JobProcessIdlePSSBytes   int64 `json:"job_process_idle_pss_bytes,omitempty"`
	JobProcessRSSBytes       int64 `json:"job_process_rss_bytes,omitempty"`
	JobProcessPSSBytes       int64 `json:"job_process_pss_bytes,omitempty"`
	JoinedJobProcessRSSBytes int64 `json:"joined_job_process_rss_bytes,omitempty"`
	JoinedJobProcessPSSBytes int64 `json:"joined_job_process_pss_bytes,omitempty"`
}

// Report is everything one run measured.
type Report struct {
	AgentName            string   `json:"agent_name"`
	Deployments          []string `json:"deployments"`
	WorkersPerDeployment int      `json:"workers_per_deployment"`
	JobType              string   `json:"job_type"`
	JoinRooms            bool     `json:"join_rooms"`
	// Processes: each job ran in a process of its own.
	Processes bool `json:"processes,omitempty"`
	Idle      int  `json:"idle,omitempty"`
	// Registration is dial to registered, per worker.
	Registration Latency `json:"registration"`
	Sequential   Phase   `json:"sequential"`
	Concurrent   Phase   `json:"concurrent"`
	Memory       Memory  `json:"memory"`
	// RoutingChecked counts jobs checked; RoutingViolations those that ran
	// on a worker of another deployment (must be 0).
	RoutingChecked    int `json:"routing_checked"`
	RoutingViolations int `json:"routing_violations"`
	// Lost counts dispatches that never reached a handler.
	Lost     int           `json:"lost"`
	Duration time.Duration `json:"duration_ns"`
}

// startWorker starts a worker with o and h and returns once it registered
// (or ctx ended, or 30s passed). The worker runs until runCtx ends, then
// drains for o.DrainTimeout (worker.DefaultDrainTimeout if unset); wg
// counts it until it stopped.
func startWorker(ctx, runCtx context.Context, wg *sync.WaitGroup, o worker.Options, h job.Handler) (*worker.Worker, error) {
	w, err := worker.New(o, h)
	if err != nil {
		return nil, fmt.Errorf("bench: worker for deployment %q: %w", o.Deployment, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.Start(sctx); err != nil {
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case sctx.Err() != nil:
			return nil, fmt.Errorf("bench: a worker for deployment %q did not register within 30s", o.Deployment)
		}
		return nil, fmt.Errorf("bench: worker for deployment %q: %w", o.Deployment, err)
	}
	drain := o.DrainTimeout
	if drain <= 0 {
		drain = worker.DefaultDrainTimeout
	}
	wg.Go(func() {
		select {
		case <-runCtx.Done():
		case <-w.Done():
			return
		}
		dctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		_ = w.Stop(dctx) // a drain that ran out of time cancelled the rest
	})
	return w, nil
}

// run is the state of one handler run.
type run struct {
	done       chan struct{} // closed when the measuring side is done with the job
	worker     string        // deployment of the worker
	offerAt    time.Time
	startAt    time.Time
	deployment string
}

type bench struct {
	cfg     Config
	mu      sync.Mutex
	offers  map[string]time.Time // room → offer received
	runs    map[string]*run      // room → run
	started chan string          // rooms whose handler started
	hold    atomic.Bool          // handlers wait for release
	join    atomic.Bool          // handlers join their room
	release chan struct{}
	workers []*worker.Worker // guarded by mu
	joinedN atomic.Int64     // jobs in job processes that joined their room
	// Jobs in job processes that could not join their room, and the
	// last error; guarded by mu.
	joinErrs    int
	lastJoinErr string
	// releaseDir, with Processes: a file created there releases the
	// held jobs of the hold of its name.
	releaseDir string
}

// Run measures and returns the report. The workers it starts are stopped
// before it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	for _, d := range cfg.Deployments {
		if strings.Contains(d, "_") {
			return nil, fmt.Errorf("bench: deployment %q: '_' is reserved", d)
		}
	}
	b := &bench{cfg: cfg, offers: map[string]time.Time{}, runs: map[string]*run{}, started: make(chan string, 100000), release: make(chan struct{})}
	b.join.Store(!cfg.SkipJoin)
	began := time.Now()
	rep := &Report{AgentName: cfg.AgentName, Deployments: cfg.Deployments, WorkersPerDeployment: cfg.WorkersPerDeployment,
		JobType: cfg.JobType.String(), JoinRooms: !cfg.SkipJoin, Processes: cfg.Processes, Idle: cfg.Idle}

	runtime.GC()
	rep.Memory.IdleRSSBytes = rss()
	rep.Memory.GoroutinesIdle = runtime.NumGoroutine()

	if cfg.Processes {
		dir, err := os.MkdirTemp("", "lkagent-bench-")
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		defer os.RemoveAll(dir) // after the workers stopped
		b.releaseDir = dir
	}
	wctx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	defer func() { stopWorkers(); wg.Wait() }()
	var regs []time.Duration
	var regMu sync.Mutex
	fmt.Fprintf(cfg.Progress, "starting %d workers per deployment for %s…\n", cfg.WorkersPerDeployment, quoteAll(cfg.Deployments))
	for _, dep := range cfg.Deployments {
		for range cfg.WorkersPerDeployment {
			var dialAt time.Time
			o := worker.Options{
				URL: cfg.URL, APIKey: cfg.APIKey, APISecret: cfg.APISecret,
				AgentName: cfg.AgentName, Deployment: dep, JobType: cfg.JobType,
				Logger: cfg.Logger, DrainTimeout: time.Second,
				OnRequest: b.onRequest,
				OnStateChange: func(c worker.StateChange) {
					switch c.State {
					case worker.StateConnecting:
						dialAt = time.Now()
					case worker.StateRegistered:
						regMu.Lock()
						regs = append(regs, time.Since(dialAt))
						regMu.Unlock()
					}
				},
			}
			h := b.handler(dep)
			if cfg.Processes {
				o.Executor = worker.Processes(worker.ProcessOptions{Idle: cfg.Idle, Env: b.jobProcessEnv()})
				o.ShutdownTimeout = processShutdownTimeout
				o.Logger = slog.New(&startTap{b: b, worker: dep, next: cfg.Logger.Handler()})
				h = processHandler
			}
			w, err := startWorker(ctx, wctx, &wg, o, h)
			if err != nil {
				return nil, err
			}
			if cfg.Processes {
				b.recordStarts(&wg, w, dep)
			}
			b.mu.Lock()
			b.workers = append(b.workers, w)
			b.mu.Unlock()
		}
	}
	regMu.Lock() // a worker that reconnects meanwhile appends again
	rep.Registration = summarize(regs)
	regMu.Unlock()
	time.Sleep(lkserver.RegistrationSettle)

	dc := lksdk.NewAgentDispatchServiceClient(lkurl.HTTP(cfg.URL), cfg.APIKey, cfg.APISecret)
	fmt.Fprintf(cfg.Progress, "sequential: %d dispatches…\n", cfg.Jobs)
	var err error
	if rep.Sequential, err = b.phase(ctx, dc, cfg.Jobs, 1, rep); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Progress, "concurrent: %d dispatches, %d at a time…\n", cfg.Jobs, cfg.Concurrency)
	if rep.Concurrent, err = b.phase(ctx, dc, cfg.Jobs, cfg.Concurrency, rep); err != nil {
		return nil, err
	}

	fmt.Fprintf(cfg.Progress, "memory: holding %d jobs…\n", cfg.MemoryJobs)
	if err := b.memory(ctx, dc, rep); err != nil {
		return nil, err
	}
	rep.Duration = time.Since(began)
	return rep, nil
}

func quoteAll(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = strconv.Quote(v)
	}
	return strings.Join(q, ", ")
}

func (b *bench) onRequest(_ context.Context, r *job.Request) error {
	now := time.Now()
	b.mu.Lock()
	b.offers[r.RoomName()] = now
	b.mu.Unlock()
	return r.Accept(job.AcceptOptions{})
}

func (b *bench) handler(workerDep string) job.Handler {
	return func(ctx context.Context, j *job.Job) error {
		now := time.Now()
		r := &run{done: make(chan struct{}), worker: workerDep, startAt: now, deployment: j.Deployment()}
		b.mu.Lock()
		r.offerAt = b.offers[j.RoomName()]
		b.runs[j.RoomName()] = r
		release := b.release
		b.mu.Unlock()
		b.started <- j.RoomName()
		if b.join.Load() {
			if _, err := j.Connect(ctx, nil); err != nil {
				return err
			}
		}
		if !b.hold.Load() {
			release = r.done
		}
		select {
		case <-ctx.Done():
		case <-release:
		}
		return nil
	}
}

// phase dispatches n jobs, conc at a time, alternating deployments.
func (b *bench) phase(ctx context.Context, dc *lksdk.AgentDispatchClient, n, conc int, rep *Report) (Phase, error) {
	p := Phase{Concurrency: conc, Jobs: n}
	type sample struct {
		room, dep string
		sent      time.Time
		visible   time.Time
		err       error
	}
	samples := make([]sample, n)
	var g errgroup.Group
	g.SetLimit(conc)
	start := time.Now()
	var lastStart atomic.Int64
	for i := range n {
		dep := b.cfg.Deployments[i%len(b.cfg.Deployments)]
		room := fmt.Sprintf("%s-%d-%d", b.cfg.AgentName, conc, i)
		g.Go(func() error {
			s := sample{room: room, dep: dep}
			var obs *lksdk.Room
			seen := make(chan time.Time, 1)
			if b.join.Load() {
				cb := lksdk.NewRoomCallback()
				cb.OnParticipantConnected = func(rp *lksdk.RemoteParticipant) {
					if rp.Kind() == lksdk.ParticipantAgent {
						select {
						case seen <- time.Now():
						default:
						}
					}
				}
				var err error
				obs, err = lksdk.ConnectToRoom(b.cfg.URL, lksdk.ConnectInfo{APIKey: b.cfg.APIKey, APISecret: b.cfg.APISecret,
					RoomName: room, ParticipantIdentity: "observer-" + room}, cb, lksdk.WithLogger(lklogger.GetDiscardLogger()))
				if err != nil {
					s.err = err
					samples[i] = s
					return nil
				}
				defer obs.Disconnect()
			}
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			s.sent = time.Now()
			if _, err := dc.CreateDispatch(dctx, &livekit.CreateAgentDispatchRequest{AgentName: b.cfg.AgentName, Room: room,
				Deployment: dep, Metadata: b.dispatchMeta("")}); err != nil {
				s.err = err
				samples[i] = s
				return nil
			}
			// Wait for the handler (and the observer) to see the job.
			deadline := time.After(30 * time.Second)
			for {
				b.mu.Lock()
				r := b.runs[room]
				b.mu.Unlock()
				if r != nil {
					lastStart.Store(max(lastStart.Load(), r.startAt.UnixNano()))
					break
				}
				select {
				case <-deadline:
					s.err = errors.New("job never started")
					samples[i] = s
					return nil
				case <-time.After(2 * time.Millisecond):
				}
			}
			if obs != nil {
				select {
				case s.visible = <-seen:
				case <-deadline:
				}
			}
			b.mu.Lock()
			close(b.runs[room].done)
			b.mu.Unlock()
			samples[i] = s
			return nil
		})
	}
	_ = g.Wait()
	elapsed := time.Since(start)
	var d2o, o2h, d2h, d2v []time.Duration
	var errTexts []string
	for _, s := range samples {
		if s.err != nil {
			p.Errors++
			errTexts = append(errTexts, s.err.Error())
			if strings.Contains(s.err.Error(), "never started") {
				rep.Lost++
			}
			continue
		}
		b.mu.Lock()
		r := b.runs[s.room]
		b.mu.Unlock()
		rep.RoutingChecked++
		if r.worker != s.dep || r.deployment != s.dep {
			rep.RoutingViolations++
		}
		if !r.offerAt.IsZero() {
			d2o = append(d2o, r.offerAt.Sub(s.sent))
			o2h = append(o2h, r.startAt.Sub(r.offerAt))
		}
		d2h = append(d2h, r.startAt.Sub(s.sent))
		if !s.visible.IsZero() {
			d2v = append(d2v, s.visible.Sub(s.sent))
		}
	}
	p.DispatchToOffer, p.OfferToHandler, p.DispatchToHandler, p.DispatchToVisible = summarize(d2o), summarize(o2h), summarize(d2h), summarize(d2v)
	p.ErrorTexts = countDistinct(errTexts)
	ok := n - p.Errors
	if last := time.Unix(0, lastStart.Load()); ok > 0 && last.After(start) {
		p.AcceptedPerSecond = float64(ok) / last.Sub(start).Seconds()
	}
	if ok > 0 {
		p.CompletedPerSecond = float64(ok) / elapsed.Seconds()
	}
	return p, ctx.Err()
}

// countDistinct returns the distinct texts, in the order they first
// appear, each followed by how often it appears when more than once.
func countDistinct(texts []string) []string {
	var order []string
	n := map[string]int{}
	for _, t := range texts {
		if n[t] == 0 {
			order = append(order, t)
		}
		n[t]++
	}
	out := make([]string, 0, len(order))
	for _, t := range order {
		if n[t] > 1 {
			t = fmt.Sprintf("%s (×%d)", t, n[t])
		}
		out = append(out, t)
	}
	return out
}

// held is what memory measured with jobs held running.
type held struct {
	rss, heap     uint64
	goroutines    int
	running, warm procmem.Mem // job processes, with Processes
}

// memory holds MemoryJobs jobs running (no room joined) and measures RSS,
// heap and goroutines, then repeats with rooms joined unless SkipJoin.
// With Processes it also measures the job processes.
func (b *bench) memory(ctx context.Context, dc *lksdk.AgentDispatchClient, rep *Report) error {
	m := &rep.Memory
	m.Jobs = b.cfg.MemoryJobs
	hold := func(join bool, tag string) (held, error) {
		b.join.Store(join)
		defer b.join.Store(!b.cfg.SkipJoin)
		b.mu.Lock()
		b.release = make(chan struct{})
		b.mu.Unlock()
		b.hold.Store(true)
		// drain stale start notifications
		for len(b.started) > 0 {
			<-b.started
		}
		b.joinedN.Store(0)
		b.mu.Lock()
		b.joinErrs, b.lastJoinErr = 0, ""
		b.mu.Unlock()
		var g errgroup.Group
		g.SetLimit(10)
		for i := range m.Jobs {
			dep := b.cfg.Deployments[i%len(b.cfg.Deployments)]
			room := fmt.Sprintf("%s-mem-%s-%d", b.cfg.AgentName, tag, i)
			g.Go(func() error {
				dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				_, err := dc.CreateDispatch(dctx, &livekit.CreateAgentDispatchRequest{AgentName: b.cfg.AgentName, Room: room,
					Deployment: dep, Metadata: b.dispatchMeta(tag)})
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return held{}, err
		}
		deadline := time.After(60 * time.Second)
		for range m.Jobs {
			select {
			case <-b.started:
			case <-deadline:
				return held{}, errors.New("bench: held jobs did not all start within 60s")
			}
		}
		if join && b.cfg.Processes {
			// Jobs in job processes tell when they joined, or failed to.
			joinDeadline := time.After(2 * time.Minute)
			for b.joinedN.Load() < int64(m.Jobs) {
				if n, err := b.joinFailures(); n > 0 {
					return held{}, fmt.Errorf("bench: %d held jobs could not join their rooms; the last: %s", n, err)
				}
				select {
				case <-joinDeadline:
					return held{}, fmt.Errorf("bench: %d of %d held jobs joined their rooms within 2 minutes of their start", b.joinedN.Load(), m.Jobs)
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
		time.Sleep(500 * time.Millisecond) // let joins settle
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		h := held{rss: rss(), heap: ms.HeapAlloc, goroutines: runtime.NumGoroutine()}
		if b.cfg.Processes {
			var err error
			if h.running, h.warm, err = b.jobProcessMemory(); err != nil {
				return held{}, err
			}
		}
		b.hold.Store(false)
		b.mu.Lock()
		close(b.release)
		b.mu.Unlock()
		if b.cfg.Processes {
			if err := b.endHeld(tag); err != nil {
				return held{}, err
			}
		}
		return h, nil
	}
	settle()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.HeapIdleBytes = ms.HeapAlloc
	base := rss()
	h, err := hold(false, "idle")
	if err != nil {
		return err
	}
	m.RSSWithJobsBytes, m.HeapAfterJobsBytes, m.GoroutinesAfterJobs = h.rss, h.heap, h.goroutines
	m.PerJobBytes = (int64(h.rss) - int64(base)) / int64(m.Jobs)
	m.HeapPerRunningJobB = (int64(h.heap) - int64(m.HeapIdleBytes)) / int64(m.Jobs)
	m.JobProcessRSSBytes, m.JobProcessPSSBytes = h.running.RSS, h.running.PSS
	m.JobProcessIdleRSSBytes, m.JobProcessIdlePSSBytes = h.warm.RSS, h.warm.PSS
	if !b.cfg.SkipJoin {
		settle()
		base := rss()
		h, err := hold(true, "joined")
		if err != nil {
			return err
		}
		m.RSSWithJoinedBytes = h.rss
		m.PerJoinedJobBytes = (int64(h.rss) - int64(base)) / int64(m.Jobs)
		m.JoinedJobProcessRSSBytes, m.JoinedJobProcessPSSBytes = h.running.RSS, h.running.PSS
	}
	return nil
}

// settle lets rooms of earlier phases close and returns freed memory, so
// that memory deltas measure the jobs alone.
func settle() {
	time.Sleep(2 * time.Second)
	runtime.GC()
	debug.FreeOSMemory()
}

// rss is this process's resident set size in bytes (Linux), or 0.
func rss() uint64 {
	m, err := procmem.Read(os.Getpid())
	if err != nil {
		return 0
	}
	return uint64(m.RSS)
}
