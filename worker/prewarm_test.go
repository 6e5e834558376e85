package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/livekittest"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// envChildPrewarm gives job processes of these tests a prewarm hook:
// "ok" makes "warm <pid>", "fail" fails.
const envChildPrewarm = "LKAGENT_TEST_CHILD_PREWARM"

// childPrewarm is the prewarm hook of the job processes of these tests.
var childPrewarm = worker.NewPrewarm(func(context.Context) (string, error) {
	if os.Getenv(envChildPrewarm) == "fail" {
		return "", errors.New("the model would not load")
	}
	return "warm " + strconv.Itoa(os.Getpid()), nil
})

// configureTestChild adds what the environment asks for to the options of
// a job process of these tests, and returns its handler: jobs with
// metadata "prewarm" check the prewarmed value, "trace" and "trace-join"
// make spans (trace_test.go); others go to next.
func configureTestChild(o *worker.Options, next job.Handler) job.Handler {
	if os.Getenv(envChildPrewarm) != "" {
		o.Prewarm = childPrewarm
	}
	configureTestChildTracing()
	return func(ctx context.Context, j *job.Job) error {
		switch j.Metadata() {
		case "prewarm":
			v, ok := childPrewarm.Value(ctx)
			if want := "warm " + strconv.Itoa(os.Getpid()); !ok || v != want {
				return fmt.Errorf("prewarmed value %q, %v; want %q made in this process", v, ok, want)
			}
			return nil
		case "trace", "trace-join":
			return traceInChild(ctx, j)
		}
		return next(ctx, j)
	}
}

// In process, the hook runs once, before the worker dials the server (so
// no offer comes before it is done), and every job's context carries its
// value, also after the worker stopped and started again.
func TestPrewarmInProcess(t *testing.T) {
	srv := workertest.NewServer(t)
	var calls, dialsBefore atomic.Int32
	warm := worker.NewPrewarm(func(ctx context.Context) (*[]string, error) {
		calls.Add(1)
		dialsBefore.Store(int32(srv.Attempts()))
		return &[]string{"model"}, nil
	})
	got := make(chan string, 10)
	o := testOptions(srv, "warm-bot", "")
	o.Prewarm = warm
	o.Logger = slog.New(newLogRecorder(t))
	w, err := worker.New(o, func(ctx context.Context, j *job.Job) error {
		v, ok := warm.Value(ctx)
		if !ok {
			got <- "no value"
			return nil
		}
		got <- fmt.Sprint((*v)[0])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for run := range 2 {
		if err := w.Start(waitCtx(t)); err != nil {
			t.Fatalf("run %d: Start: %v", run, err)
		}
		c := mustConn(t, srv)
		for range 2 {
			j := workertest.NewJob("warm-bot", "")
			dispatch(t, c, j)
			waitStatus(t, c, j.Id, livekit.JobStatus_JS_SUCCESS)
			if v := <-got; v != "model" {
				t.Fatalf("run %d: the job saw %q, want the prewarmed value", run, v)
			}
		}
		if err := w.Stop(waitCtx(t)); err != nil {
			t.Fatalf("run %d: Stop: %v", run, err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("prewarm ran %d times, want once per process", n)
	}
	if n := dialsBefore.Load(); n != 0 {
		t.Errorf("the worker dialed %d times before prewarm ran, want 0", n)
	}
}

// A prewarm that fails (returns an error or panics) fails Start and Run
// with ErrPrewarm and its cause, before the worker dials; the next Start
// tries again.
func TestPrewarmFailsStart(t *testing.T) {
	errModel := errors.New("the model would not load")
	for _, tc := range []struct {
		name string
		fail func() (int, error)
		want string
	}{
		{"error", func() (int, error) { return 0, errModel }, "the model would not load"},
		{"panic", func() (int, error) { panic("out of model") }, "prewarm panicked: out of model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := workertest.NewServer(t)
			var failing atomic.Bool
			failing.Store(true)
			warm := worker.NewPrewarm(func(context.Context) (int, error) {
				if failing.Load() {
					return tc.fail()
				}
				return 7, nil
			})
			o := testOptions(srv, "warm-bot", "")
			o.Prewarm = warm
			o.Logger = slog.New(newLogRecorder(t))
			w, err := worker.New(o, func(context.Context, *job.Job) error { return nil })
			if err != nil {
				t.Fatal(err)
			}
			for _, start := range []struct {
				name string
				fn   func(context.Context) error
			}{{"Start", w.Start}, {"Run", w.Run}} {
				err := start.fn(waitCtx(t))
				if !errors.Is(err, worker.ErrPrewarm) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("%s = %v, want ErrPrewarm saying %q", start.name, err, tc.want)
				}
			}
			if tc.name == "error" {
				if err := w.Start(waitCtx(t)); !errors.Is(err, errModel) {
					t.Fatalf("Start = %v, want it to wrap the hook's error", err)
				}
			}
			if n := srv.Attempts(); n != 0 {
				t.Fatalf("the worker dialed %d times although its prewarm failed", n)
			}
			failing.Store(false)
			if err := w.Start(waitCtx(t)); err != nil {
				t.Fatalf("Start after the hook recovered: %v", err)
			}
			if err := w.Stop(waitCtx(t)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A prewarm's value is read only through that Prewarm, from a context
// that carries it.
func TestPrewarmValue(t *testing.T) {
	a := worker.NewPrewarm(func(context.Context) (string, error) { return "", nil })
	b := worker.NewPrewarm(func(context.Context) (string, error) { return "", nil })
	ctx := a.WithValue(context.Background(), "from a")
	child, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, tc := range []struct {
		name   string
		p      *worker.Prewarm[string]
		ctx    context.Context
		want   string
		wantOK bool
	}{
		{"its own", a, ctx, "from a", true},
		{"derived context", a, child, "from a", true},
		{"another prewarm", b, ctx, "", false},
		{"no value", a, context.Background(), "", false},
	} {
		if v, ok := tc.p.Value(tc.ctx); v != tc.want || ok != tc.wantOK {
			t.Errorf("%s: Value = %q, %v; want %q, %v", tc.name, v, ok, tc.want, tc.wantOK)
		}
	}
}

// With job processes, each process runs the hook before it reports ready,
// and its job reads the value made in its own process.
func TestPrewarmInJobProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts job processes")
	}
	srv := workertest.NewServer(t)
	o := processOptions(srv, worker.ProcessOptions{Env: []string{envChildPrewarm + "=ok"}})
	startWorker(t, o, misbehave)
	c := mustConn(t, srv)
	for range 2 {
		j := procJob("prewarm")
		dispatch(t, c, j)
		waitStatus(t, c, j.Id, livekit.JobStatus_JS_SUCCESS)
	}
}

// A job process whose prewarm fails counts as a start that failed: the
// pool becomes unhealthy, the worker reports itself full and /readyz says
// why, and the hook's error is logged with the failed start.
func TestPrewarmFailsJobProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts job processes")
	}
	srv := workertest.NewServer(t)
	o := processOptions(srv, worker.ProcessOptions{Env: []string{envChildPrewarm + "=fail"}})
	r := startWorker(t, o, misbehave)
	expectUnstartable(t, r, mustConn(t, srv), "the model would not load")
	eventually(t, "the failed start logged with the prewarm's error", func() bool {
		return r.logs.count(slog.LevelWarn, "the model would not load") > 0
	})
}

// A prewarm hook loads what every job uses once per process, before the
// worker takes jobs; each job reads it from its context. With
// worker.Processes, each job process runs the hook before it is ready.
func ExampleNewPrewarm() {
	srv := workertest.NewServer(nil)
	defer srv.Close()

	type model struct{ name string }
	warm := worker.NewPrewarm(func(ctx context.Context) (*model, error) {
		fmt.Println("loading the model")
		return &model{name: "vad-v5"}, nil
	})
	done := make(chan struct{})
	w, err := worker.New(worker.Options{
		URL: srv.URL(), APIKey: "key", APISecret: "secret", AgentName: "support-bot",
		Prewarm: warm,
		Logger:  slog.New(slog.DiscardHandler),
	}, func(ctx context.Context, j *job.Job) error {
		defer close(done)
		m, ok := warm.Value(ctx)
		fmt.Println("job uses the prewarmed model:", ok, m.name)
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil { // runs the hook, then registers
		fmt.Println(err)
		return
	}
	conn, _ := srv.WaitWorker(ctx)
	_, _ = conn.Dispatch(ctx, workertest.NewJob("support-bot", ""))
	<-done
	fmt.Println("Stop:", w.Stop(ctx))
	// Output:
	// loading the model
	// job uses the prewarmed model: true vad-v5
	// Stop: <nil>
}

// Against the real server, in both executors: a dispatched job reads the
// value its process prewarmed (its outcome is read from its span).
func TestPrewarmRealServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a LiveKit server")
	}
	srv := livekittest.Start(t)
	for _, procs := range []bool{false, true} {
		t.Run(fmt.Sprintf("processes=%v", procs), func(t *testing.T) {
			tp, sr := newRecorderProvider(t)
			agent := livekittest.UniqueName("warm-bot")
			o := worker.Options{URL: srv.URL, APIKey: srv.APIKey, APISecret: srv.APISecret, AgentName: agent,
				TracerProvider: tp, Logger: livekittest.Logger(t), KeepSDKLogger: true}
			if procs {
				// The job processes prewarm childPrewarm (configureTestChild).
				o.Executor = worker.Processes(worker.ProcessOptions{Env: []string{envChildPrewarm + "=ok"}})
			} else {
				o.Prewarm = childPrewarm
			}
			// In process, the handler is the one job processes run.
			startWorker(t, o, configureTestChild(&worker.Options{}, misbehave))
			d := srv.Dispatch(t, livekittest.UniqueName("room"), agent, "", "prewarm")
			s := jobSpanWith(t, sr, "lkagent.dispatch.id", d.GetId())
			if got := attr(s, "lkagent.job.outcome"); got != "success" {
				t.Fatalf("job outcome %q (%s), want success: the job saw its prewarmed value", got, s.Status().Description)
			}
		})
	}
}
