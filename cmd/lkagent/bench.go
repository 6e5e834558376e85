package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/cmd/lkagent/internal/bench"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
)

// benchFlags are the bench command's flags.
type benchFlags struct {
	f    *flags
	conn *conn

	workers     *int
	deployments *string
	asJSON      *bool

	// The latency, throughput and memory bench.
	jobs, conc, memJobs *int
	jobType             *string
	noJoin              *bool
	processes           *bool
	idle                *int

	// The burst.
	burst, maxJobs, maxQueued *int
	hold, queueTimeout        *time.Duration
	lostAfter                 *time.Duration
	via                       *string
	settle                    *time.Duration
	noHeld                    *bool
}

// Flags of one mode only, for the usage errors.
var (
	regularOnlyFlags = []string{"jobs", "concurrency", "memory-jobs", "job-type", "no-join", "processes", "idle"}
	burstOnlyFlags   = []string{"max-jobs", "max-queued", "hold", "queue-timeout", "lost-after", "via", "settle", "no-held"}
)

func newBenchFlags() *benchFlags {
	f := newFlags("bench", "[--workers N] [--jobs N] [--concurrency N] [--json] [flags]\n"+
		"       lkagent bench --burst N [--max-jobs N] [--max-queued N] [--hold D] [--workers N] [--json] [flags]",
		"Measures workers against a LiveKit server: registration time, dispatch → handler start and\n"+
			"dispatch → agent visible latencies (the server's part and the worker's part), jobs per second,\n"+
			"memory per running job, and, in the same run, that every job ran on a worker of its own\n"+
			"deployment. Without --url it starts a local server of its own. With --processes each job runs\n"+
			"in a process of its own (lkagent started again), and the job processes' memory is measured too.\n\n"+
			"With --burst N it measures capacity instead: N dispatches created at once, each to a room of\n"+
			"its own, taken by workers with --max-jobs slots and a queue of --max-queued; each job holds\n"+
			"for --hold. It reports the jobs that ran, were lost (not started within --lost-after of the\n"+
			"last dispatch) or ran twice, the peak of jobs running at once per worker (counted by the\n"+
			"handlers), the split of jobs between the workers, the queue wait p50/p99 (offer accepted →\n"+
			"handler start, measured by the bench) and the time from the first dispatch until the last job\n"+
			"started. A lost or duplicated job makes it exit 1. A burst serves one deployment, staging,\n"+
			"unless --deployments says otherwise.")
	b := &benchFlags{f: f, conn: addConn(f)}
	b.workers = f.fs.Int("workers", 1, "workers per deployment")
	b.deployments = f.fs.String("deployments", ",staging", "comma-separated deployments to run workers for (empty is production; a burst's default is staging)")
	b.asJSON = f.fs.Bool("json", false, "print JSON instead of a table")
	b.jobs = f.fs.Int("jobs", 20, "dispatches in each of the sequential and the concurrent phase")
	b.conc = f.fs.Int("concurrency", 10, "dispatches at a time in the concurrent phase")
	b.memJobs = f.fs.Int("memory-jobs", 50, "jobs held running at once to measure memory per job")
	b.jobType = f.fs.String("job-type", "room", "job type: room, publisher or participant")
	b.noJoin = f.fs.Bool("no-join", false, "handlers do not join their room (and agent visibility is not measured)")
	b.idle = f.fs.Int("idle", 0, "with --processes: warm job processes each worker keeps ready (0 = the worker's default, 1)")
	b.processes = f.fs.Bool("processes", false, "run each job in a process of its own (the workers' Processes executor) and measure the job processes' memory too")
	b.burst = f.fs.Int("burst", 0, "dispatches created at once: measure capacity and the admission queue (see above)")
	b.maxJobs = f.fs.Int("max-jobs", 0, "with --burst: the workers' MaxJobs, jobs running at once (0 = no cap)")
	b.maxQueued = f.fs.Int("max-queued", 0, "with --burst: the workers' MaxQueued, jobs waiting for a slot (0 = as many as --max-jobs, -1 = no queue)")
	b.hold = f.fs.Duration("hold", bench.DefaultBurstHold, "with --burst: how long each job runs")
	b.queueTimeout = f.fs.Duration("queue-timeout", 0, "with --burst: the workers' QueueTimeout (0 = the worker's default, 30s)")
	b.via = f.fs.String("via", bench.ViaCreateDispatch, "with --burst: how dispatches are created: "+bench.ViaCreateDispatch+" (the server's CreateDispatch), "+bench.ViaClient+" (dispatch.Client: a new room is created with its dispatch), or "+viaBoth+" (one then the other, on one server)")
	b.settle = f.fs.Duration("settle", 0, "with --burst: wait this long after the workers registered (0 = 500ms); above 5s the server's cache of agent names, rebuilt after every registration, is warm")
	b.noHeld = f.fs.Bool("no-held", false, "with --burst: the workers do not serve held dispatches (jobs the server dropped stay lost)")
	b.lostAfter = f.fs.Duration("lost-after", 0, "with --burst: a job not started this long after the last dispatch is lost (0 = queue timeout + hold + 1m)")
	return b
}

func runBench(ctx context.Context, e *env, args []string) error {
	const name = "bench"
	b := newBenchFlags()
	if err := b.f.parse(e, args); err != nil {
		return err
	}
	if *b.workers < 1 {
		return usagef(name, "--workers must be at least 1")
	}
	deps, err := b.deploymentList()
	if err != nil {
		return err
	}
	var measure func(ctx context.Context, url, key, secret string) (benchReport, error)
	if b.f.isSet("burst") {
		measure, err = b.burstMode(e, deps)
	} else {
		measure, err = b.regularMode(e, deps)
	}
	if err != nil {
		return err
	}
	url, key, secret, stop, err := b.server(ctx, e)
	if err != nil {
		return err
	}
	defer stop()
	rep, err := measure(ctx, url, key, secret)
	if err != nil {
		if ctx.Err() != nil {
			return interrupted(ctx)
		}
		return err
	}
	if err := writeBenchReport(e.stdout, rep, *b.asJSON); err != nil {
		return err
	}
	return rep.Failed()
}

// benchReport is what either mode reports.
type benchReport interface {
	WriteTable(io.Writer) error
	Failed() error
}

// regularReport makes the latency, throughput and memory report a
// benchReport.
type regularReport struct{ *bench.Report }

func (r regularReport) Failed() error {
	if r.RoutingViolations > 0 || r.Lost > 0 {
		return fmt.Errorf("%d routing violations and %d lost jobs", r.RoutingViolations, r.Lost)
	}
	return nil
}

func (r regularReport) MarshalJSON() ([]byte, error) { return json.Marshal(r.Report) }

func writeBenchReport(out io.Writer, rep benchReport, asJSON bool) error {
	if !asJSON {
		return rep.WriteTable(out)
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// deploymentList is --deployments, checked; a burst serves staging unless
// --deployments is given.
func (b *benchFlags) deploymentList() ([]string, error) {
	if b.f.isSet("burst") && !b.f.isSet("deployments") {
		return []string{"staging"}, nil
	}
	deps := strings.Split(*b.deployments, ",")
	for _, d := range deps {
		if err := checkDeployment("bench", "deployments", d); err != nil {
			return nil, err
		}
	}
	return deps, nil
}

// rejectFlags fails if any of names was given: they belong to the other
// mode.
func (b *benchFlags) rejectFlags(names []string, why string) error {
	for _, n := range names {
		if b.f.isSet(n) {
			return usagef("bench", "--%s %s", n, why)
		}
	}
	return nil
}

func (b *benchFlags) regularMode(e *env, deps []string) (func(context.Context, string, string, string) (benchReport, error), error) {
	const name = "bench"
	if err := b.rejectFlags(burstOnlyFlags, "needs --burst"); err != nil {
		return nil, err
	}
	if *b.jobs < 1 || *b.conc < 1 || *b.memJobs < 1 {
		return nil, usagef(name, "--workers, --jobs, --concurrency and --memory-jobs must be at least 1")
	}
	if b.f.isSet("idle") && (!*b.processes || *b.idle < 1) {
		return nil, usagef(name, "--idle needs --processes and must be at least 1")
	}
	jt, ok := map[string]livekit.JobType{"room": livekit.JobType_JT_ROOM, "publisher": livekit.JobType_JT_PUBLISHER,
		"participant": livekit.JobType_JT_PARTICIPANT}[*b.jobType]
	if !ok {
		return nil, usagef(name, "--job-type %q: use room, publisher or participant", *b.jobType)
	}
	if jt != livekit.JobType_JT_ROOM {
		return nil, usagef(name, "--job-type %s: the bench dispatches explicitly, which starts room jobs only", *b.jobType)
	}
	cfg := bench.Config{Deployments: deps, WorkersPerDeployment: *b.workers, Jobs: *b.jobs, Concurrency: *b.conc,
		MemoryJobs: *b.memJobs, JobType: jt, SkipJoin: *b.noJoin, Processes: *b.processes, Idle: *b.idle,
		Progress: &prefixWriter{w: e.stderr, prefix: "bench: "}}
	return func(ctx context.Context, url, key, secret string) (benchReport, error) {
		cfg.URL, cfg.APIKey, cfg.APISecret = url, key, secret
		rep, err := bench.Run(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return regularReport{rep}, nil
	}, nil
}

func (b *benchFlags) burstMode(e *env, deps []string) (func(context.Context, string, string, string) (benchReport, error), error) {
	const name = "bench"
	if err := b.rejectFlags(regularOnlyFlags, "does not apply to --burst"); err != nil {
		return nil, err
	}
	switch {
	case *b.burst < 1:
		return nil, usagef(name, "--burst must be at least 1")
	case *b.maxJobs < 0:
		return nil, usagef(name, "--max-jobs must not be negative (0 = no cap)")
	case *b.maxQueued < -1:
		return nil, usagef(name, "--max-queued must be at least -1 (0 = as many as --max-jobs, -1 = no queue)")
	case *b.hold <= 0:
		return nil, usagef(name, "--hold must be positive")
	case *b.queueTimeout < 0 || *b.lostAfter < 0 || *b.settle < 0:
		return nil, usagef(name, "--queue-timeout, --lost-after and --settle must not be negative")
	case *b.via != bench.ViaCreateDispatch && *b.via != bench.ViaClient && *b.via != viaBoth:
		return nil, usagef(name, "--via must be %s, %s or %s", bench.ViaCreateDispatch, bench.ViaClient, viaBoth)
	}
	cfg := bench.BurstConfig{Deployments: deps, WorkersPerDeployment: *b.workers, Jobs: *b.burst,
		MaxJobs: *b.maxJobs, MaxQueued: *b.maxQueued, QueueTimeout: *b.queueTimeout, Hold: *b.hold,
		LostAfter: *b.lostAfter, Via: *b.via, Settle: *b.settle, NoHeld: *b.noHeld, Progress: &prefixWriter{w: e.stderr, prefix: "bench: "}}
	return func(ctx context.Context, url, key, secret string) (benchReport, error) {
		cfg.URL, cfg.APIKey, cfg.APISecret = url, key, secret
		if cfg.Via != viaBoth {
			return bench.RunBurst(ctx, cfg)
		}
		// One after the other on one server, each with workers of its own.
		var pair burstPair
		for _, via := range []string{bench.ViaCreateDispatch, bench.ViaClient} {
			c := cfg
			c.Via, c.AgentName = via, ""
			rep, err := bench.RunBurst(ctx, c)
			if err != nil {
				return nil, err
			}
			pair.Runs = append(pair.Runs, rep)
		}
		return pair, nil
	}, nil
}

// viaBoth is --via both: the burst through CreateDispatch, then through
// dispatch.Client, on one server.
const viaBoth = "both"

// burstPair is the report of --via both.
type burstPair struct {
	Runs []*bench.BurstReport `json:"runs"`
}

func (p burstPair) WriteTable(out io.Writer) error {
	for _, r := range p.Runs {
		if err := r.WriteTable(out); err != nil {
			return err
		}
		fmt.Fprintln(out)
	}
	if len(p.Runs) == 2 {
		a, b := p.Runs[0].DispatchToStart, p.Runs[1].DispatchToStart
		ratio := func(x, y float64) string {
			if y <= 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f×", x/y)
		}
		fmt.Fprintf(out, "dispatch → handler start, CreateDispatch vs dispatch.Client: p50 %.0f vs %.0f ms (%s), p99 %.0f vs %.0f ms (%s)\n",
			a.P50, b.P50, ratio(a.P50, b.P50), a.P99, b.P99, ratio(a.P99, b.P99))
	}
	return nil
}

func (p burstPair) Failed() error {
	var errs []error
	for _, r := range p.Runs {
		if err := r.Failed(); err != nil {
			errs = append(errs, fmt.Errorf("via %s: %w", r.Via, err))
		}
	}
	return errors.Join(errs...)
}

// server is the server to measure against: the one the connection flags
// name, or a local one of its own, stopped by stop.
func (b *benchFlags) server(ctx context.Context, e *env) (url, key, secret string, stop func(), err error) {
	if b.f.isSet("url") {
		if err := b.conn.check("bench"); err != nil {
			return "", "", "", nil, err
		}
		return b.conn.url, b.conn.apiKey, b.conn.apiSecret, func() {}, nil
	}
	fmt.Fprintf(e.stderr, "bench: starting a local LiveKit server %s…\n", lkserver.Version)
	srv, err := startServer(ctx, e.stderr, lkserver.Options{})
	if err != nil {
		return "", "", "", nil, err
	}
	return srv.URL(), srv.APIKey(), srv.APISecret(), func() { _ = srv.Stop() }, nil
}
