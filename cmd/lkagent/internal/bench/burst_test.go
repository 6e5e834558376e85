package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/worker"
)

func TestBurstConfigDefaults(t *testing.T) {
	for _, tc := range []struct {
		name      string
		in        BurstConfig
		queueCap  int
		lostAfter time.Duration
	}{
		{"no cap", BurstConfig{}, 0, worker.DefaultQueueTimeout + DefaultBurstHold + time.Minute},
		{"queue as large as the slots", BurstConfig{MaxJobs: 20}, 20, worker.DefaultQueueTimeout + DefaultBurstHold + time.Minute},
		{"no queue", BurstConfig{MaxJobs: 20, MaxQueued: -1}, 0, worker.DefaultQueueTimeout + DefaultBurstHold + time.Minute},
		{"queue and timeout", BurstConfig{MaxJobs: 20, MaxQueued: 300, QueueTimeout: time.Minute, Hold: time.Second}, 300, 2*time.Minute + time.Second},
		{"lost-after given", BurstConfig{LostAfter: 5 * time.Second}, 0, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.in
			if err := c.defaults(); err != nil {
				t.Fatal(err)
			}
			if got := c.queueCap(); got != tc.queueCap {
				t.Errorf("queueCap = %d, want %d", got, tc.queueCap)
			}
			if c.LostAfter != tc.lostAfter {
				t.Errorf("LostAfter = %s, want %s", c.LostAfter, tc.lostAfter)
			}
			if c.Jobs != DefaultBurstJobs || len(c.Deployments) != 1 || c.Deployments[0] != "staging" || c.Quiet != DefaultBurstQuiet {
				t.Errorf("defaults: %d jobs, deployments %q, quiet %s", c.Jobs, c.Deployments, c.Quiet)
			}
		})
	}
	for _, bad := range []BurstConfig{{MaxJobs: -1}, {MaxQueued: -2}, {Hold: -time.Second}, {Deployments: []string{"prod_us"}}} {
		if err := bad.defaults(); err == nil {
			t.Errorf("defaults accepted %+v", bad)
		}
	}
}

func TestBurstReportFailed(t *testing.T) {
	if err := (&BurstReport{Ran: 300}).Failed(); err != nil {
		t.Fatalf("a clean burst failed: %v", err)
	}
	err := (&BurstReport{Lost: 3, RunTwice: 1, DispatchErrors: 2}).Failed()
	if err == nil || err.Error() != "3 jobs lost, 1 jobs run twice, 2 dispatches failed" {
		t.Fatalf("Failed() = %v", err)
	}
}

func TestBurstWriteTable(t *testing.T) {
	rep := &BurstReport{AgentName: "a", Deployments: []string{"staging"}, WorkersPerDeployment: 2, MaxJobs: 20, MaxQueued: 300,
		QueueTimeoutMS: 30000, HoldMS: 2000, LostAfterMS: 92000, Jobs: 300, Dispatched: 300, Ran: 298, Lost: 2, QueueTimeouts: 2,
		FirstDispatchToLastStartMS: 24221, QueueWait: Latency{N: 298, P50: 4996, P95: 10363, P99: 11492, Max: 11971},
		QueueWaitMeasure: queueWaitMeasure, WaitEnded: "2 jobs did not start",
		Workers: []BurstWorker{{WorkerID: "AW_1", Deployment: "staging", Ran: 150, PeakRunning: 20, Offers: 150, Queued: 120},
			{WorkerID: "AW_2", Deployment: "staging", Ran: 148, PeakRunning: 20, Offers: 150, Queued: 118, QueueTimeouts: 2}}}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"MaxJobs 20, MaxQueued 300, QueueTimeout 30s", "each job holds 2s", "ran  ", "298",
		"2 (2 of them queue timeouts", "first dispatch → last job started", "24.221s",
		"queue wait", "4996", "11492", queueWaitMeasure, "AW_1", "AW_2", "peak running"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

// A small burst against the real server: 12 dispatches at once to one
// worker with 3 slots and a queue. Every job runs once, never more than 3
// at once, and the worker's metrics show jobs that went through its queue.
func TestRunBurstAgainstRealServer(t *testing.T) {
	s := lkserver.StartTB(t, lkserver.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	rep, err := RunBurst(ctx, BurstConfig{URL: s.URL(), APIKey: s.APIKey(), APISecret: s.APISecret(),
		Jobs: 12, MaxJobs: 3, MaxQueued: 12, QueueTimeout: time.Minute, Hold: time.Second, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	if err := rep.Failed(); err != nil {
		t.Fatalf("burst failed: %v", err)
	}
	if rep.Ran != 12 || rep.Dispatched != 12 || len(rep.Workers) != 1 {
		t.Fatalf("ran %d of %d dispatched, %d workers", rep.Ran, rep.Dispatched, len(rep.Workers))
	}
	w := rep.Workers[0]
	if w.PeakRunning != 3 || w.Ran != 12 || w.Offers != 12 || w.Declined != 0 || w.Queued == 0 || !strings.HasPrefix(w.WorkerID, "AW_") {
		t.Errorf("worker: %+v", w)
	}
	if rep.QueueWait.N != 12 || rep.QueueWait.P99 < rep.QueueWait.P50 || rep.QueueWait.Max < 500 {
		t.Errorf("queue wait %+v: 12 jobs through 3 slots of 1s, some must have waited", rep.QueueWait)
	}
	if rep.FirstDispatchToLastStartMS < 3000 {
		t.Errorf("the last job started %.0f ms after the first dispatch: 4 rounds of 1s jobs take 3s at least", rep.FirstDispatchToLastStartMS)
	}
	if rep.WaitEnded != "every job started" || !strings.Contains(progress.String(), "dispatches created") {
		t.Errorf("wait ended %q; progress:\n%s", rep.WaitEnded, progress.String())
	}
}
