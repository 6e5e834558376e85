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
