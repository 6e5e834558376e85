package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/bench"
	"github.com/lkagent/lkagent/internal/lkserver"
)

func runBench(ctx context.Context, e *env, args []string) error {
	const name = "bench"
	f := newFlags(name, "[--workers N] [--jobs N] [--concurrency N] [--json] [flags]",
		"Measures workers against a LiveKit server: registration time, dispatch → handler start and\n"+
			"dispatch → agent visible latencies (the server's part and the worker's part), jobs per second,\n"+
			"memory per running job, and, in the same run, that every job ran on a worker of its own\n"+
			"deployment. Without --url it starts a local server of its own.")
	c := addConn(f)
	workers := f.fs.Int("workers", 1, "workers per deployment")
	jobs := f.fs.Int("jobs", 20, "dispatches in each of the sequential and the concurrent phase")
	conc := f.fs.Int("concurrency", 10, "dispatches at a time in the concurrent phase")
	memJobs := f.fs.Int("memory-jobs", 50, "jobs held running at once to measure memory per job")
	deployments := f.fs.String("deployments", ",staging", "comma-separated deployments to run workers for (empty is production)")
	jobType := f.fs.String("job-type", "room", "job type: room, publisher or participant")
	noJoin := f.fs.Bool("no-join", false, "handlers do not join their room (and agent visibility is not measured)")
	asJSON := f.fs.Bool("json", false, "print JSON instead of a table")
	if err := f.parse(e, args); err != nil {
		return err
	}
	if *workers < 1 || *jobs < 1 || *conc < 1 || *memJobs < 1 {
		return usagef(name, "--workers, --jobs, --concurrency and --memory-jobs must be at least 1")
	}
	jt, ok := map[string]livekit.JobType{"room": livekit.JobType_JT_ROOM, "publisher": livekit.JobType_JT_PUBLISHER,
		"participant": livekit.JobType_JT_PARTICIPANT}[*jobType]
	if !ok {
		return usagef(name, "--job-type %q: use room, publisher or participant", *jobType)
	}
	if jt != livekit.JobType_JT_ROOM {
		return usagef(name, "--job-type %s: the bench dispatches explicitly, which starts room jobs only", *jobType)
	}
	deps := strings.Split(*deployments, ",")
	for _, d := range deps {
		if err := checkDeployment(name, "deployments", d); err != nil {
			return err
		}
	}
	cfg := bench.Config{Deployments: deps, WorkersPerDeployment: *workers, Jobs: *jobs, Concurrency: *conc,
		MemoryJobs: *memJobs, JobType: jt, SkipJoin: *noJoin, Progress: &prefixWriter{w: e.stderr, prefix: "bench: "}}
	if f.isSet("url") {
		if err := c.check(name); err != nil {
			return err
		}
		cfg.URL, cfg.APIKey, cfg.APISecret = c.url, c.apiKey, c.apiSecret
	} else {
		fmt.Fprintf(e.stderr, "bench: starting a local LiveKit server %s…\n", lkserver.Version)
		srv, err := startServer(ctx, e.stderr, lkserver.Options{})
		if err != nil {
			return err
		}
		defer srv.Stop()
		cfg.URL, cfg.APIKey, cfg.APISecret = srv.URL(), srv.APIKey(), srv.APISecret()
	}
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return interrupted(ctx)
		}
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else if err := rep.WriteTable(e.stdout); err != nil {
		return err
	}
	if rep.RoutingViolations > 0 || rep.Lost > 0 {
		return fmt.Errorf("%d routing violations and %d lost jobs", rep.RoutingViolations, rep.Lost)
	}
	return nil
}
