package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/jobproc"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// envProcBench, in a job process's environment, makes it serve
// procBenchHandler instead of the tests' handler: see init.
const envProcBench = "LKAGENT_TEST_PROC_BENCH"

// procBenchStarted is the message procBenchHandler logs as it starts.
const procBenchStarted = "benchmark handler started"

// Job processes of BenchmarkProcessAssignmentToHandlerStart serve
// procBenchHandler; they are told apart from the tests' job processes
// (which TestMain serves) before TestMain runs.
func init() {
	if jobproc.IsChild() && os.Getenv(envProcBench) != "" {
		w, err := worker.New(procBenchOptions("ws://127.0.0.1:1"), procBenchHandler)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Exit(worker.ExitCode(w.Run(context.Background()))) // serves the job, then returns ErrJobProcessDone
	}
}

func procBenchOptions(url string) worker.Options {
	return worker.Options{URL: url, APIKey: "bench-key", APISecret: "bench-secret", AgentName: benchAgent,
		Executor:        worker.Processes(worker.ProcessOptions{Idle: 1, Env: []string{envProcBench + "=1"}}),
		ShutdownTimeout: 5 * time.Second, DrainTimeout: 5 * time.Second}
}

// runProcBenchWorker runs a worker with job processes (idle warm ones)
// against a fake server until b ends, and returns its registered
// connection and the final statuses of its jobs (buffered for n).
func runProcBenchWorker(b *testing.B, idle int, log *slog.Logger, n int) (*workertest.Conn, <-chan *livekit.UpdateJobStatus) {
	finals := make(chan *livekit.UpdateJobStatus, n)
	srv := workertest.NewServerWithOptions(b, workertest.Options{NoRecord: true,
		OnMessage: func(_ *workertest.Conn, m *livekit.WorkerMessage) {
			if u := m.GetUpdateJob(); u != nil && (u.GetStatus() == livekit.JobStatus_JS_SUCCESS || u.GetStatus() == livekit.JobStatus_JS_FAILED) {
				finals <- u
			}
		}})
	o := procBenchOptions(srv.URL())
	o.Executor = worker.Processes(worker.ProcessOptions{Idle: idle, Env: []string{envProcBench + "=1"}})
	o.Logger = log
	w, err := worker.New(o, procBenchHandler)
	if err != nil {
		b.Fatal(err)
	}
	worker.SetStatusDelay(w, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run = %v", err)
		}
	})
	conn, err := srv.WaitWorker(waitCtx(b))
	if err != nil {
		b.Fatalf("the worker did not register: %v", err)
	}
	return conn, finals
}

// procBenchHandler logs the instant it starts, on the wall clock (which
// the job process shares with the parent), and returns.
func procBenchHandler(_ context.Context, j *job.Job) error {
	j.Logger().Info(procBenchStarted, slog.Int64("start_unix_ns", time.Now().UnixNano()))
	return nil
}

// startCapture is the parent worker's log handler: it passes on the start
// instants that job processes log, and whether each job got a warm process.
type startCapture struct {
	starts chan time.Time
	warm   chan bool
}

func (h *startCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h *startCapture) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *startCapture) WithGroup(string) slog.Handler            { return h }

func (h *startCapture) Handle(_ context.Context, r slog.Record) error {
	switch r.Message {
	case procBenchStarted:
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "start_unix_ns" {
				h.starts <- time.Unix(0, a.Value.Int64())
				return false
			}
			return true
		})
	case "job started":
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "warm" {
				h.warm <- a.Value.Bool()
				return false
			}
			return true
		})
	}
	return nil
}

// Assignment → handler start in a job process (Processes executor), one
// job at a time, each given a warm process: from the fake sending the
// assignment to the handler's first line in the job process, on the wall
// clock both processes share (p50-ms, p99-ms). timing-p50-ms and
// timing-p99-ms are the same span as the job reports it in its
// JobJoinTiming (EntrypointStartedUs - AssignmentReceivedUs): from the
// worker reading the assignment, on the job process's copy of the timing
// base. Between jobs, outside the timed part, the benchmark waits for the
// job's final status and gives the pool time to start the next warm
// process; starts that found none are counted (cold-starts) and left out
// of the percentiles.
func BenchmarkProcessAssignmentToHandlerStart(b *testing.B) {
	capture := &startCapture{starts: make(chan time.Time, 16), warm: make(chan bool, 16)}
	conn, finals := runProcBenchWorker(b, 1, slog.New(capture), 16)
	// step bounds one offer or assignment.
	step := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), patience)
	}
	var lat, timing []time.Duration
	cold := 0
	i := 0
	time.Sleep(time.Second) // the first warm process starts
	for b.Loop() {
		j := benchJob(i)
		i++
		b.StopTimer()
		octx, ocancel := step()
		res, err := conn.Offer(octx, j)
		ocancel()
		if err != nil || !res.GetAvailable() {
			b.Fatalf("offer %d: %v, %v", i, res, err)
		}
		actx, acancel := step()
		b.StartTimer()
		sent := time.Now()
		err = conn.Assign(actx, j, workertest.Token)
		acancel()
		if err != nil {
			b.Fatal(err)
		}
		var start time.Time
		select {
		case start = <-capture.starts:
		case <-time.After(patience):
			b.Fatalf("job %s: the handler did not start within %s", j.GetId(), patience)
		}
		b.StopTimer()
		var warm bool
		var final *livekit.UpdateJobStatus
		select {
		case warm = <-capture.warm:
		case <-time.After(patience):
			b.Fatalf("job %s: no start logged", j.GetId())
		}
		select {
		case final = <-finals:
		case <-time.After(patience):
			b.Fatalf("job %s: no final status within %s", j.GetId(), patience)
		}
		if final.GetJobId() != j.GetId() || final.GetStatus() != livekit.JobStatus_JS_SUCCESS {
			b.Fatalf("final status %v of %s, want success of %s", final.GetStatus(), final.GetJobId(), j.GetId())
		}
		if !warm {
			cold++
		} else {
			lat = append(lat, start.Sub(sent))
			jt := final.GetJoinTiming()
			timing = append(timing, time.Duration(jt.GetEntrypointStartedUs()-jt.GetAssignmentReceivedUs())*time.Microsecond)
		}
		time.Sleep(300 * time.Millisecond) // the next warm process starts
		b.StartTimer()
	}
	ms := func(d []time.Duration, q float64) float64 { return percentile(d, q) / 1000 }
	b.ReportMetric(ms(lat, 0.50), "p50-ms")
	b.ReportMetric(ms(lat, 0.99), "p99-ms")
	b.ReportMetric(ms(timing, 0.50), "timing-p50-ms")
	b.ReportMetric(ms(timing, 0.99), "timing-p99-ms")
	b.ReportMetric(float64(cold), "cold-starts")
	b.ReportMetric(0, "ns/op")
}

// Jobs per second in process mode: b.N jobs offered and assigned back to
// back against the fake server, each in a new job process whose handler
// returns at once, with Idle warm processes. The figure is bounded by how
// fast the machine starts processes of this (test) binary: the parent
// starts one per job, ahead of time as far as Idle allows.
func BenchmarkProcessJobThroughput(b *testing.B) {
	for _, idle := range []int{1, 8} {
		b.Run(fmt.Sprintf("idle=%d", idle), func(b *testing.B) {
			conn, finals := runProcBenchWorker(b, idle, slog.New(slog.DiscardHandler), 1024)
			time.Sleep(2 * time.Second) // the warm processes start
			failed := 0
			i := 0
			start := time.Now()
			for b.Loop() {
				j := benchJob(i)
				i++
				octx, ocancel := context.WithTimeout(context.Background(), patience)
				res, err := conn.Offer(octx, j)
				if err == nil && res.GetAvailable() {
					err = conn.Assign(octx, j, workertest.Token)
				}
				ocancel()
				if err != nil || !res.GetAvailable() {
					b.Fatalf("job %d: %v, %v", i, res, err)
				}
			}
			for range i {
				select {
				case u := <-finals:
					if u.GetStatus() != livekit.JobStatus_JS_SUCCESS {
						failed++
					}
				case <-time.After(patience):
					b.Fatalf("not every job ended within %s", patience)
				}
			}
			took := time.Since(start)
			if failed > 0 {
				b.Fatalf("%d of %d jobs failed", failed, i)
			}
			b.ReportMetric(float64(i)/took.Seconds(), "jobs/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}
