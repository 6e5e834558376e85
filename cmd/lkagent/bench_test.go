package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// lkagent bench with small numbers against the real server: the JSON report
// is complete, and no job crossed deployments.
func TestBenchJSONAgainstRealServer(t *testing.T) {
	t.Parallel()
	r := cli(t, srvEnv(), "bench", "--jobs", "4", "--concurrency", "2", "--memory-jobs", "4", "--json")
	if r.code != 0 {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	var rep struct {
		Deployments  []string `json:"deployments"`
		Registration struct {
			N   int     `json:"n"`
			P50 float64 `json:"p50_ms"`
		} `json:"registration"`
		Sequential, Concurrent struct {
			Jobs              int `json:"jobs"`
			Errors            int `json:"errors"`
			DispatchToHandler struct {
				N   int     `json:"n"`
				P50 float64 `json:"p50_ms"`
				P99 float64 `json:"p99_ms"`
			} `json:"dispatch_to_handler"`
			DispatchToOffer struct {
				N int `json:"n"`
			} `json:"dispatch_to_offer"`
			DispatchToVisible struct {
				N int `json:"n"`
			} `json:"dispatch_to_visible"`
			AcceptedPerSecond float64 `json:"accepted_per_second"`
		}
		Memory struct {
			IdleRSS   uint64 `json:"idle_rss_bytes"`
			WithJobs  uint64 `json:"rss_with_jobs_bytes"`
			WithRooms uint64 `json:"rss_with_joined_jobs_bytes"`
		} `json:"memory"`
		RoutingChecked    int `json:"routing_checked"`
		RoutingViolations int `json:"routing_violations"`
		Lost              int `json:"lost"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("bench --json does not parse: %v\n%s", err, r.stdout)
	}
	if rep.RoutingViolations != 0 || rep.Lost != 0 || rep.RoutingChecked != 8 {
		t.Fatalf("routing: %d checked, %d violations, %d lost", rep.RoutingChecked, rep.RoutingViolations, rep.Lost)
	}
	if len(rep.Deployments) != 2 || rep.Registration.N != 2 || rep.Registration.P50 <= 0 {
		t.Errorf("workers: %+v %+v", rep.Deployments, rep.Registration)
	}
	for name, ph := range map[string]struct {
		n, errs, offers, visible int
		p50, p99, rate           float64
	}{
		"sequential": {rep.Sequential.DispatchToHandler.N, rep.Sequential.Errors, rep.Sequential.DispatchToOffer.N,
			rep.Sequential.DispatchToVisible.N, rep.Sequential.DispatchToHandler.P50, rep.Sequential.DispatchToHandler.P99, rep.Sequential.AcceptedPerSecond},
		"concurrent": {rep.Concurrent.DispatchToHandler.N, rep.Concurrent.Errors, rep.Concurrent.DispatchToOffer.N,
			rep.Concurrent.DispatchToVisible.N, rep.Concurrent.DispatchToHandler.P50, rep.Concurrent.DispatchToHandler.P99, rep.Concurrent.AcceptedPerSecond},
	} {
		if ph.n != 4 || ph.errs != 0 || ph.offers != 4 || ph.visible != 4 || ph.p50 <= 0 || ph.p99 < ph.p50 || ph.rate <= 0 {
			t.Errorf("%s phase: %+v", name, ph)
		}
	}
	if rep.Memory.IdleRSS == 0 || rep.Memory.WithJobs == 0 || rep.Memory.WithRooms == 0 {
		t.Errorf("memory: %+v", rep.Memory)
	}
	if !strings.Contains(r.stderr, "bench: sequential") {
		t.Errorf("no progress on stderr: %q", r.stderr)
	}
}

// burstJSON is the part of bench --burst --json the tests read.
type burstJSON struct {
	Jobs       int `json:"jobs"`
	Dispatched int `json:"dispatched"`
	Ran        int `json:"ran"`
	Lost       int `json:"lost"`
	RunTwice   int `json:"run_twice"`
	MaxJobs    int `json:"max_jobs"`
	MaxQueued  int `json:"max_queued"`
	Workers    []struct {
		WorkerID    string `json:"worker_id"`
		Ran         int    `json:"ran"`
		PeakRunning int    `json:"peak_running"`
		Queued      int    `json:"queued"`
	} `json:"workers"`
	QueueWait struct {
		N   int     `json:"n"`
		P50 float64 `json:"p50_ms"`
		P99 float64 `json:"p99_ms"`
	} `json:"queue_wait"`
	QueueWaitMeasure string  `json:"queue_wait_measure"`
	LastStartMS      float64 `json:"first_dispatch_to_last_start_ms"`
}

// lkagent bench --burst against the real server: 30 dispatches at once to
// one worker with 5 slots and a queue; all ran once, 5 at most at once.
func TestBenchBurstJSONAgainstRealServer(t *testing.T) {
	t.Parallel()
	r := cli(t, srvEnv(), "bench", "--burst", "30", "--max-jobs", "5", "--max-queued", "30", "--hold", "1s",
		"--queue-timeout", "1m", "--json")
	if r.code != 0 {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	var rep burstJSON
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("bench --burst --json does not parse: %v\n%s", err, r.stdout)
	}
	if rep.Jobs != 30 || rep.Dispatched != 30 || rep.Ran != 30 || rep.Lost != 0 || rep.RunTwice != 0 {
		t.Fatalf("jobs: %+v", rep)
	}
	if rep.MaxJobs != 5 || rep.MaxQueued != 30 || len(rep.Workers) != 1 {
		t.Fatalf("workers: %+v", rep)
	}
	if w := rep.Workers[0]; w.Ran != 30 || w.PeakRunning != 5 || w.Queued == 0 || !strings.HasPrefix(w.WorkerID, "AW_") {
		t.Errorf("worker: %+v", w)
	}
	if rep.QueueWait.N != 30 || rep.QueueWait.P99 < rep.QueueWait.P50 || rep.QueueWaitMeasure == "" {
		t.Errorf("queue wait: %+v %q", rep.QueueWait, rep.QueueWaitMeasure)
	}
	// 6 rounds of 1s jobs through 5 slots: the last starts 5s in at least.
	if rep.LastStartMS < 5000 {
		t.Errorf("last job started %.0f ms after the first dispatch", rep.LastStartMS)
	}
	if !strings.Contains(r.stderr, "bench: burst: 30 dispatches at once") {
		t.Errorf("no progress on stderr: %q", r.stderr)
	}
}

// The table of a burst over two workers lists both.
func TestBenchBurstTableTwoWorkers(t *testing.T) {
	t.Parallel()
	r := cli(t, srvEnv(), "bench", "--burst", "12", "--max-jobs", "3", "--workers", "2", "--hold", "500ms")
	if r.code != 0 {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"burst of 12 dispatches at once", `deployments "staging", 2 worker(s)`,
		"MaxJobs 3, MaxQueued 3", "queue wait", "peak running", "first dispatch → last job started"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("table lacks %q:\n%s", want, r.stdout)
		}
	}
	if n := strings.Count(r.stdout, "\nAW_"); n != 2 {
		t.Errorf("%d worker rows, want 2:\n%s", n, r.stdout)
	}
}

// Without a queue, a burst larger than the slots loses jobs (the server
// drops what the full worker declines): the bench says so and exits 1.
func TestBenchBurstLostJobsExit1(t *testing.T) {
	t.Parallel()
	// Without held dispatches: the jobs the server dropped stay lost.
	r := cli(t, srvEnv(), "bench", "--burst", "10", "--max-jobs", "2", "--max-queued", "-1", "--hold", "3s", "--no-held", "--json")
	if r.code != exitFailure {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	var rep burstJSON
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("bench --burst --json does not parse: %v\n%s", err, r.stdout)
	}
	if rep.Lost == 0 || rep.Ran+rep.Lost != 10 || rep.Workers[0].PeakRunning > 2 {
		t.Errorf("report: %+v", rep)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "lkagent: bench: ") || !strings.Contains(last, "jobs lost") {
		t.Errorf("last line of stderr: %q", last)
	}
}

// The same burst with held dispatches (the default): the workers serve the
// jobs the server dropped while they were full, once each.
func TestBenchBurstHeldNoneLost(t *testing.T) {
	t.Parallel()
	r := cli(t, srvEnv(), "bench", "--burst", "10", "--max-jobs", "2", "--max-queued", "-1", "--hold", "3s", "--json")
	var rep burstJSON
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("bench --burst --json does not parse: %v\n%s\n%s", err, r.stdout, r.stderr)
	}
	if r.code != 0 || rep.Lost != 0 || rep.Ran != 10 || rep.RunTwice != 0 || rep.Workers[0].PeakRunning > 2 {
		t.Fatalf("exit %d, report %+v\nstderr:\n%s", r.code, rep, r.stderr)
	}
}

func TestBenchBurstUsage(t *testing.T) {
	t.Parallel()
	env := srvEnv()
	for _, tc := range []struct {
		args  []string
		parts []string
	}{
		{[]string{"--max-jobs", "5"}, []string{"--max-jobs needs --burst"}},
		{[]string{"--hold", "1s"}, []string{"--hold needs --burst"}},
		{[]string{"--burst", "10", "--jobs", "3"}, []string{"--jobs does not apply to --burst"}},
		{[]string{"--burst", "0"}, []string{"--burst must be at least 1"}},
		{[]string{"--burst", "10", "--max-queued", "-2"}, []string{"--max-queued must be at least -1"}},
		{[]string{"--burst", "10", "--hold", "0s"}, []string{"--hold must be positive"}},
		{[]string{"--burst", "10", "--deployments", "prod_us"}, []string{"not a valid deployment"}},
		{[]string{"--burst", "10", "--workers", "0"}, []string{"--workers must be at least 1"}},
		{[]string{"--burst", "10", "--via", "fax"}, []string{"--via must be"}},
		{[]string{"--via", "client"}, []string{"--via needs --burst"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			cli(t, env, append([]string{"bench"}, tc.args...)...).mustFail(t, exitUsage, tc.parts...)
		})
	}
	out := cli(t, cleanEnv(), "bench", "--help").mustOK(t).stdout
	for _, want := range []string{"lkagent bench --burst N", "--max-queued", "--queue-timeout", "--hold", "queue wait", "exit 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("bench --help lacks %q:\n%s", want, out)
		}
	}
}
