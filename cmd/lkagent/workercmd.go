package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

func runWorker(ctx context.Context, e *env, args []string) error {
	const name = "worker"
	f := newFlags(name, "--agent-name NAME [--deployment D] [--max-jobs N] [--processes] [--http-addr ADDR] [flags]",
		"Runs the example echo agent as a worker registered with agent NAME and deployment D (empty is\n"+
			"production): it takes only jobs dispatched to that name and deployment, joins their room and\n"+
			"answers every chat or data message with \"echo[D]: <text>\". Its log goes to stdout; an error\n"+
			"that stops it, as one line, to stderr. With --processes each job runs in a process of its own\n"+
			"(lkagent started again with the same arguments), which a crash or --memory-limit-mib ends alone.\n"+
			"SIGINT or SIGTERM drains it (no new jobs; running ones may finish within --drain-timeout);\n"+
			"a second signal cancels the running jobs at once, sends their final statuses and exits 130;\n"+
			"a third one exits without waiting.")
	c := addConn(f)
	agentName := f.fs.String("agent-name", "", "agent name to register with; dispatches address it")
	deployment := f.fs.String("deployment", "", "deployment to register with; empty is production")
	maxJobs := f.fs.Int("max-jobs", 0, "jobs run at once at most; 0 = no cap")
	maxQueued := f.fs.Int("max-queued", 0, "accepted jobs that may wait for a slot beyond --max-jobs; 0 = as many as --max-jobs, -1 = no queue")
	queueTimeout := f.fs.Duration("queue-timeout", worker.DefaultQueueTimeout, "a queued job that could not start within it is reported failed")
	httpAddr := f.fs.String("http-addr", "127.0.0.1:0", "serve /metrics, /healthz, /readyz, / and /worker there (port 0: a free port, logged); empty turns them off")
	drain := f.fs.Duration("drain-timeout", worker.DefaultDrainTimeout, "how long a stopping worker lets running jobs finish")
	shutdown := f.fs.Duration("shutdown-timeout", worker.DefaultShutdownTimeout, "how long cancelled jobs get to return after the drain timeout")
	maxRetry := f.fs.Int("max-retry", 0, "give up after this many failed connection attempts in a row; 0 = keep trying")
	procs := f.fs.Bool("processes", false, "run each job in a process of its own")
	idle := f.fs.Int("idle", 0, "with --processes: job processes kept started and ready; 0 = the worker's default, 1")
	memLimit := f.fs.Int64("memory-limit-mib", 0, "with --processes: kill a job process whose resident memory passes this many MiB, and fail its job; 0 = no limit")
	debug := f.fs.Bool("debug", false, "log at debug level")
	f.env("agent-name", "LKAGENT_AGENT_NAME")
	f.env("deployment", worker.EnvDeployment)
	f.env("max-jobs", "LKAGENT_MAX_JOBS")
	f.env("max-queued", "LKAGENT_MAX_QUEUED")
	f.env("http-addr", "LKAGENT_HTTP_ADDR")
	f.required("agent-name")
	if err := f.parse(e, args); err != nil {
		return err
	}
	if err := checkDeployment(name, f.source("deployment"), *deployment); err != nil {
		return err
	}
	if err := c.check(name); err != nil {
		return err
	}
	if *maxJobs < 0 || *maxRetry < 0 || *maxQueued < -1 || *drain <= 0 || *shutdown <= 0 || *queueTimeout <= 0 {
		return usagef(name, "--max-jobs and --max-retry must not be negative, --max-queued not below -1, and the timeouts must be positive")
	}
	if *idle < 0 || *memLimit < 0 || *memLimit > 1<<20 {
		return usagef(name, "--idle and --memory-limit-mib must not be negative, and --memory-limit-mib is in MiB (at most 1048576)")
	}
	if !*procs && (*idle != 0 || *memLimit != 0) {
		return usagef(name, "--idle and --memory-limit-mib need --processes")
	}
	executor := worker.InProcess()
	if *procs {
		executor = worker.Processes(worker.ProcessOptions{Idle: *idle, MemoryLimit: *memLimit << 20})
	}

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	// The log is what this command produces: stdout. stderr keeps the one
	// line of an error that stops it.
	log := slog.New(slog.NewTextHandler(&syncWriter{w: e.stdout}, &slog.HandlerOptions{Level: level}))
	for _, n := range f.envNotes() {
		log.Info("from the environment: " + n)
	}
	w, err := worker.New(worker.Options{
		URL: c.url, APIKey: c.apiKey, APISecret: c.apiSecret,
		AgentName:       *agentName,
		Deployment:      *deployment,
		MaxJobs:         *maxJobs,
		MaxQueued:       *maxQueued,
		QueueTimeout:    *queueTimeout,
		HTTPAddr:        *httpAddr,
		DrainTimeout:    *drain,
		ShutdownTimeout: *shutdown,
		MaxRetry:        *maxRetry,
		RegisterTimeout: c.timeout,
		OnRequest:       echoagent.OnRequest,
		Executor:        executor,
		Logger:          log,
	}, func(ctx context.Context, j *job.Job) error {
		err := echoagent.Handle(ctx, j)
		j.Logger().Info("job ended", slog.String("cause", fmt.Sprint(context.Cause(ctx))))
		return err
	})
	if err != nil {
		var oe *worker.OptionError
		if errors.As(err, &oe) {
			return usagef(name, "%v", err)
		}
		return err
	}
	started := time.Now()
	// The worker takes the second signal over from main: it cancels the
	// running jobs and still sends their final statuses before it exits.
	claimSecondSignal(ctx)
	err = w.RunUntilSignal(ctx)
	var se *worker.SignalError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("%w: a second signal cancelled the running jobs; their final statuses were sent", &signalError{sig: se.Signal})
	case errors.Is(err, worker.ErrUnauthorized):
		return fmt.Errorf("the LiveKit server at %s rejected the API key or secret: check --api-key and --api-secret or $%s and $%s",
			c.url, worker.EnvAPIKey, worker.EnvAPISecret)
	case errors.Is(err, worker.ErrGaveUp):
		why := err.Error()
		var opErr *net.OpError
		if errors.As(err, &opErr) {
			why = opErr.Err.Error()
		}
		return fmt.Errorf("cannot reach the LiveKit server at %s (%s), gave up after %d retries (--max-retry): check --url or $%s",
			c.url, why, *maxRetry, worker.EnvURL)
	case err != nil:
		return err
	}
	log.Info("worker stopped", slog.Duration("ran", time.Since(started).Round(time.Millisecond)))
	return nil
}

// signalClaimKey keys a *atomic.Bool in a command's context: main puts it
// there, and a command that handles the second signal itself sets it
// (claimSecondSignal); main then leaves the second signal to the command
// and exits at once only on a third.
type signalClaimKey struct{}

// withSignalClaim returns ctx carrying claimed.
func withSignalClaim(ctx context.Context, claimed *atomic.Bool) context.Context {
	return context.WithValue(ctx, signalClaimKey{}, claimed)
}

// claimSecondSignal tells main that this command handles the second
// signal itself.
func claimSecondSignal(ctx context.Context) {
	if c, ok := ctx.Value(signalClaimKey{}).(*atomic.Bool); ok {
		c.Store(true)
	}
}
