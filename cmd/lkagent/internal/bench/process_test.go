package bench

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
)

// The test binary serves the job processes of the benches it runs with
// Processes, as lkagent does.
func TestMain(m *testing.M) {
	if IsJobProcess() {
		ServeJobProcess()
	}
	os.Exit(m.Run())
}

// The joins a job process logs reach the bench through the worker's
// logger; every record goes on to the next handler.
func TestStartTapRecordsJoins(t *testing.T) {
	b := &bench{offers: map[string]time.Time{}, runs: map[string]*run{}}
	var out bytes.Buffer
	log := slog.New(&startTap{b: b, worker: "staging", next: slog.NewTextHandler(&out, nil)}).With(slog.String("job_id", "AJ_1"))
	log.Info(joinedMsg)
	log.Warn(joinFailedMsg, slog.String("error", "no route"))
	if b.joinedN.Load() != 1 {
		t.Errorf("joined %d, want 1", b.joinedN.Load())
	}
	if n, err := b.joinFailures(); n != 1 || err != "no route" {
		t.Errorf("join failures %d (%q), want 1 (no route)", n, err)
	}
	if !strings.Contains(out.String(), "job_id=AJ_1") || strings.Count(out.String(), "\n") != 2 {
		t.Errorf("records passed on:\n%s", out.String())
	}
}

func TestDispatchMeta(t *testing.T) {
	b := &bench{}
	if m := b.dispatchMeta("idle"); m != "" {
		t.Errorf("in process: %q, want none", m)
	}
	b.cfg.Processes = true
	b.join.Store(true)
	for hold, want := range map[string]string{"": "join", "joined": "join,hold=joined"} {
		if m := b.dispatchMeta(hold); m != want {
			t.Errorf("hold %q: %q, want %q", hold, m, want)
		}
	}
	b.join.Store(false)
	if m := b.dispatchMeta("idle"); m != "hold=idle" {
		t.Errorf("%q, want hold=idle", m)
	}
}

// A small bench with each job in a process of its own, against the real
// server: every job ran on a worker of its deployment, and the job
// processes' memory was measured.
func TestRunProcessesAgainstRealServer(t *testing.T) {
	s := lkserver.StartTB(t, lkserver.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{URL: s.URL(), APIKey: s.APIKey(), APISecret: s.APISecret(),
		Jobs: 4, Concurrency: 2, MemoryJobs: 3, Processes: true, Idle: 2})
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	if rep.Lost != 0 || rep.RoutingViolations != 0 || rep.RoutingChecked != 8 || !rep.Processes {
		t.Fatalf("lost %d, %d routing violations in %d jobs checked", rep.Lost, rep.RoutingViolations, rep.RoutingChecked)
	}
	for _, ph := range []Phase{rep.Sequential, rep.Concurrent} {
		if ph.Errors != 0 || ph.OfferToHandler.N != 4 || ph.DispatchToVisible.N != 4 || ph.OfferToHandler.P50 <= 0 {
			t.Errorf("phase %+v: want 4 jobs started and seen, no error", ph)
		}
	}
	m := rep.Memory
	for name, v := range map[string][2]int64{
		"warm":    {m.JobProcessIdleRSSBytes, m.JobProcessIdlePSSBytes},
		"running": {m.JobProcessRSSBytes, m.JobProcessPSSBytes},
		"joined":  {m.JoinedJobProcessRSSBytes, m.JoinedJobProcessPSSBytes},
	} {
		if v[0] <= 0 || v[1] <= 0 || v[1] > v[0] {
			t.Errorf("%s job process: RSS %d, PSS %d", name, v[0], v[1])
		}
	}
	if !strings.Contains(table.String(), "memory of a job process") {
		t.Errorf("the table does not show the job processes' memory")
	}
}
