package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/livekittest"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// patience bounds every wait of these tests: far above what any step needs,
// so that a slow, shared machine never fails a test.
const patience = 20 * time.Second

// testSecret is the API secret of every test worker; no error or log line
// may ever contain it.
const testSecret = "s3cret-never-shown-9f2c"

// waitCtx returns a context that ends after patience or when the test ends.
func waitCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	return ctx
}

// testOptions are fast options against srv: short pings and backoff.
func testOptions(srv *workertest.Server, agentName, deployment string) worker.Options {
	return worker.Options{
		URL:            srv.URL(),
		APIKey:         "test-key",
		APISecret:      testSecret,
		AgentName:      agentName,
		Deployment:     deployment,
		PingInterval:   100 * time.Millisecond,
		PongTimeout:    2 * time.Second,
		StatusInterval: time.Second,
		MinBackoff:     20 * time.Millisecond,
		MaxBackoff:     200 * time.Millisecond,
		// A job a test forgot to end holds Run's end this long.
		DrainTimeout: 5 * time.Second,
	}
}

// running is a worker whose Run runs until the test ends.
type running struct {
	t      testing.TB
	w      *worker.Worker
	cancel context.CancelFunc
	done   chan error
	logs   *logRecorder
}

// startWorker creates a worker with o and handler and runs it; the test's
// cleanup stops it and checks that Run returned nil. When o.Logger is nil
// the worker logs to a recorder (see running.logs) and the test log.
func startWorker(t testing.TB, o worker.Options, handler job.Handler) *running {
	t.Helper()
	r := &running{t: t, done: make(chan error, 1)}
	if o.Logger == nil {
		r.logs = newLogRecorder(t)
		o.Logger = slog.New(r.logs)
	}
	w, err := worker.New(o, handler)
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	r.w = w
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- w.Run(ctx) }()
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("Run returned %v", err)
		}
		if r.logs != nil && r.logs.count(slog.LevelDebug, testSecret) > 0 {
			t.Errorf("the API secret appears in the worker's logs")
		}
	})
	return r
}

// stop cancels Run's context and returns what Run returned.
func (r *running) stop() error {
	r.cancel()
	return r.wait()
}

// wait waits for Run to return (it may have returned before) and returns
// its result.
func (r *running) wait() error {
	select {
	case err, ok := <-r.done:
		if !ok {
			return nil
		}
		close(r.done)
		return err
	case <-time.After(patience):
		r.t.Errorf("Run did not return within %s", patience)
		return nil
	}
}

// mustConn waits for the next registered connection.
func mustConn(t testing.TB, srv *workertest.Server) *workertest.Conn {
	t.Helper()
	c, err := srv.WaitWorker(waitCtx(t))
	if err != nil {
		t.Fatalf("no worker registered: %v", err)
	}
	return c
}

// dispatch offers j on c, asserts the worker accepts, and assigns it.
func dispatch(t testing.TB, c *workertest.Conn, j *livekit.Job) *livekit.AvailabilityResponse {
	t.Helper()
	res, err := c.Dispatch(waitCtx(t), j)
	if err != nil {
		t.Fatalf("dispatch %s: %v", j.GetId(), err)
	}
	if !res.GetAvailable() {
		t.Fatalf("dispatch %s: worker declined the offer", j.GetId())
	}
	return res
}

// waitStatus waits for job id to report status on c.
func waitStatus(t testing.TB, c *workertest.Conn, id string, status livekit.JobStatus) *livekit.UpdateJobStatus {
	t.Helper()
	u, err := c.WaitJobStatus(waitCtx(t), id, status)
	if err != nil {
		t.Fatalf("job %s: %v (statuses so far: %s)", id, err, statuses(c.JobStatuses()))
	}
	return u
}

// statuses formats job statuses for failure messages.
func statuses(us []*livekit.UpdateJobStatus) string {
	var b strings.Builder
	for _, u := range us {
		fmt.Fprintf(&b, "[%s %s %q] ", u.GetJobId(), u.GetStatus(), u.GetError())
	}
	return b.String()
}

// statusesOf returns the statuses reported for job id, in order.
func statusesOf(us []*livekit.UpdateJobStatus, id string) []livekit.JobStatus {
	var out []livekit.JobStatus
	for _, u := range us {
		if u.GetJobId() == id {
			out = append(out, u.GetStatus())
		}
	}
	return out
}

// recorder is a job handler that records the jobs it runs and holds each
// until its context ends or release is closed.
type recorder struct {
	started chan *job.Job
	release chan struct{}
	once    sync.Once

	mu   sync.Mutex
	runs []string
}

func newRecorder() *recorder {
	return &recorder{started: make(chan *job.Job, 1000), release: make(chan struct{})}
}

// releaseAll lets every held job return.
func (r *recorder) releaseAll() { r.once.Do(func() { close(r.release) }) }

func (r *recorder) handle(ctx context.Context, j *job.Job) error {
	r.mu.Lock()
	r.runs = append(r.runs, j.ID())
	r.mu.Unlock()
	r.started <- j
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-r.release:
		return nil
	}
}

// ran returns the ids of the jobs run so far.
func (r *recorder) ran() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.runs)
}

// waitStarted waits for the next job to start and returns it.
func (r *recorder) waitStarted(t testing.TB) *job.Job {
	t.Helper()
	select {
	case j := <-r.started:
		return j
	case <-time.After(patience):
		t.Fatalf("no job started within %s", patience)
		return nil
	}
}

// eventually polls cond until it is true or patience runs out.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	livekittest.Eventually(t, patience, what, cond)
}

// logRecorder is a slog.Handler that keeps every record and copies it to
// the test log while the test runs.
type logRecorder struct {
	t     testing.TB
	attrs []slog.Attr
	root  *logRoot
}

type logRoot struct {
	mu      sync.Mutex
	ended   bool
	records []logEntry
}

// logEntry is one recorded log line.
type logEntry struct {
	Level slog.Level
	Msg   string
	Text  string // message and attributes
}

func newLogRecorder(t testing.TB) *logRecorder {
	l := &logRecorder{t: t, root: &logRoot{}}
	t.Cleanup(func() {
		l.root.mu.Lock()
		l.root.ended = true
		l.root.mu.Unlock()
	})
	return l
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range l.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.root.mu.Lock()
	defer l.root.mu.Unlock()
	l.root.records = append(l.root.records, logEntry{Level: r.Level, Msg: r.Message, Text: b.String()})
	if !l.root.ended && r.Level >= slog.LevelInfo {
		l.t.Log(b.String())
	}
	return nil
}

func (l *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &logRecorder{t: l.t, attrs: append(slices.Clip(l.attrs), as...), root: l.root}
}

func (l *logRecorder) WithGroup(string) slog.Handler { return l }

// entries returns the records logged so far.
func (l *logRecorder) entries() []logEntry {
	l.root.mu.Lock()
	defer l.root.mu.Unlock()
	return slices.Clone(l.root.records)
}

// count returns how many records at level or above contain substr.
func (l *logRecorder) count(level slog.Level, substr string) int {
	n := 0
	for _, e := range l.entries() {
		if e.Level >= level && strings.Contains(e.Text, substr) {
			n++
		}
	}
	return n
}

// sendTermination sends a JobTermination for id whatever the fake knows of
// the job (Conn.Terminate sends one only for a job the connection runs).
func sendTermination(t testing.TB, c *workertest.Conn, id string) {
	t.Helper()
	if err := c.Send(waitCtx(t), &livekit.ServerMessage{Message: &livekit.ServerMessage_Termination{
		Termination: &livekit.JobTermination{JobId: id}}}); err != nil {
		t.Fatal(err)
	}
}
