package worker_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/livekittest"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// envChildSpans makes job processes of these tests export their spans to
// the file it names, through the global TracerProvider; the SDK's batch
// processor there exports only when flushed.
const envChildSpans = "LKAGENT_TEST_CHILD_SPANS"

// configureTestChildTracing sets the global TracerProvider of a job
// process of these tests when the environment asks for it, as a program's
// main would.
func configureTestChildTracing() {
	if path := os.Getenv(envChildSpans); path != "" {
		otel.SetTracerProvider(sdktrace.NewTracerProvider(
			sdktrace.WithBatcher(fileExporter{path: path}, sdktrace.WithBatchTimeout(time.Hour))))
	}
}

// traceInChild is the handler of "trace" and "trace-join" jobs in a job
// process: it joins the room (for "trace-join") and makes a span of its
// own with the global tracer.
func traceInChild(ctx context.Context, j *job.Job) error {
	if j.Metadata() == "trace-join" {
		if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
			return err
		}
	}
	_, span := otel.Tracer("handler").Start(ctx, "handler-work")
	span.End()
	return nil
}

// fileExporter writes one line per span: trace id, span id, parent span
// id, name.
type fileExporter struct{ path string }

func (e fileExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	f, err := os.OpenFile(e.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	for _, s := range spans {
		fmt.Fprintf(f, "%s %s %s %s\n", s.SpanContext().TraceID(), s.SpanContext().SpanID(), s.Parent().SpanID(), s.Name())
	}
	return f.Close()
}

func (fileExporter) Shutdown(context.Context) error { return nil }

// exportedSpan is a line of a fileExporter's file.
type exportedSpan struct{ traceID, spanID, parentID, name string }

func readExported(t *testing.T, path string) []exportedSpan {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("the job process exported no span: %v", err)
	}
	defer f.Close()
	var out []exportedSpan
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var s exportedSpan
		if _, err := fmt.Sscan(sc.Text(), &s.traceID, &s.spanID, &s.parentID, &s.name); err == nil {
			out = append(out, s)
		}
	}
	return out
}

// waitIdle waits for a worker status, sent after the statuses c has now,
// that counts no job: a job's end is reported before its slot frees.
func waitIdle(t *testing.T, c *workertest.Conn) {
	t.Helper()
	var last uint64
	for _, u := range c.WorkerStatuses() {
		last = max(last, u.GetSeq())
	}
	if _, err := c.WaitWorkerStatus(waitCtx(t), func(u *livekit.UpdateWorkerStatus) bool {
		return u.GetSeq() > last && u.GetJobCount() == 0
	}); err != nil {
		t.Fatalf("the worker never reported itself idle: %v", err)
	}
}

// newRecorderProvider is an SDK TracerProvider whose ended spans the
// returned recorder keeps.
func newRecorderProvider(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, sr
}

// jobSpan returns the ended span of job id.
func jobSpan(t *testing.T, sr *tracetest.SpanRecorder, id string) sdktrace.ReadOnlySpan {
	t.Helper()
	return jobSpanWith(t, sr, "lkagent.job.id", id)
}

// jobSpanWith waits for the ended job span whose attribute key is value.
func jobSpanWith(t *testing.T, sr *tracetest.SpanRecorder, key, value string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found sdktrace.ReadOnlySpan
	eventually(t, "the job span with "+key+"="+value, func() bool {
		for _, s := range sr.Ended() {
			if s.Name() == worker.SpanName && attr(s, key) == value {
				found = s
				return true
			}
		}
		return false
	})
	return found
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return "(unset)"
}

func eventNames(s sdktrace.ReadOnlySpan) []string {
	var names []string
	for _, e := range s.Events() {
		names = append(names, e.Name)
	}
	return names
}

// checkJobSpan checks what every job span carries.
func checkJobSpan(t *testing.T, s sdktrace.ReadOnlySpan, j *livekit.Job, outcome string, events []string) {
	t.Helper()
	for key, want := range map[string]string{
		"lkagent.job.id": j.GetId(), "lkagent.dispatch.id": j.GetDispatchId(), "livekit.room": j.GetRoom().GetName(),
		"lkagent.agent.name": j.GetAgentName(), "lkagent.deployment": j.GetDeployment(), "lkagent.job.outcome": outcome,
	} {
		if got := attr(s, key); got != want {
			t.Errorf("job %s: span attribute %s = %q, want %q", j.GetId(), key, got, want)
		}
	}
	if got := eventNames(s); !slices.Equal(got, events) {
		t.Errorf("job %s: span events %v, want %v", j.GetId(), got, events)
	}
	if s.SpanKind() != trace.SpanKindConsumer || s.Parent().IsValid() {
		t.Errorf("job %s: span kind %v, parent %v; want a consumer span that starts its trace", j.GetId(), s.SpanKind(), s.Parent())
	}
}

// In process, every job is a span of the TracerProvider in Options, with
// its ids, room, agent and deployment, the events of its life, its
// outcome and cause; a failed job's span has status Error; the handler's
// context carries the span, so that the handler's spans are its children.
func TestTraceInProcess(t *testing.T) {
	tp, sr := newRecorderProvider(t)
	srv := workertest.NewServer(t)
	o := testOptions(srv, "trace-bot", "staging")
	o.TracerProvider = tp
	o.MaxJobs, o.MaxQueued = 1, 1
	release := make(chan struct{})
	var mu sync.Mutex
	handlerSpans := map[string]trace.SpanContext{}
	startWorker(t, o, func(ctx context.Context, j *job.Job) error {
		_, span := tp.Tracer("handler").Start(ctx, "handler-work")
		mu.Lock()
		handlerSpans[j.ID()] = span.SpanContext()
		mu.Unlock()
		span.End()
		switch j.Metadata() {
		case "hold":
			<-release
		case "fail":
			return errors.New("the handler failed on purpose")
		case "wait":
			<-ctx.Done()
		}
		return nil
	})
	c := mustConn(t, srv)
	newJob := func(meta string) *livekit.Job {
		j := workertest.NewJob("trace-bot", "staging")
		j.Metadata = meta
		return j
	}
	held, queued, failed, terminated := newJob("hold"), newJob(""), newJob("fail"), newJob("wait")
	dispatch(t, c, held)
	eventually(t, "the first job running", func() bool { mu.Lock(); defer mu.Unlock(); return len(handlerSpans) == 1 })
	dispatch(t, c, queued) // waits for the held job's slot
	waitStatus(t, c, queued.Id, livekit.JobStatus_JS_PENDING)
	close(release)
	waitStatus(t, c, held.Id, livekit.JobStatus_JS_SUCCESS)
	waitStatus(t, c, queued.Id, livekit.JobStatus_JS_SUCCESS)
	waitIdle(t, c) // the next jobs find a free slot
	dispatch(t, c, failed)
	waitStatus(t, c, failed.Id, livekit.JobStatus_JS_FAILED)
	waitIdle(t, c)
	dispatch(t, c, terminated)
	eventually(t, "the last job running", func() bool { mu.Lock(); defer mu.Unlock(); return len(handlerSpans) == 4 })
	sendTermination(t, c, terminated.Id)

	start := []string{"offer", "accept", "assignment", "launch"}
	for _, tc := range []struct {
		j       *livekit.Job
		outcome string
		events  []string
		status  codes.Code
		cause   string
	}{
		{held, "success", append(start, "end"), codes.Unset, "(unset)"},
		{queued, "success", []string{"offer", "accept", "assignment", "queue_wait", "launch", "end"}, codes.Unset, "(unset)"},
		{failed, "failed", append(start, "end"), codes.Error, "(unset)"},
		{terminated, "terminated", append(start, "end"), codes.Unset, job.ErrTerminated.Error()},
	} {
		s := jobSpan(t, sr, tc.j.Id)
		checkJobSpan(t, s, tc.j, tc.outcome, tc.events)
		if s.Status().Code != tc.status {
			t.Errorf("job %s: span status %v, want %v", tc.j.Id, s.Status(), tc.status)
		}
		if got := attr(s, "lkagent.job.cause"); got != tc.cause {
			t.Errorf("job %s: cause %q, want %q", tc.j.Id, got, tc.cause)
		}
		mu.Lock()
		h := handlerSpans[tc.j.Id]
		mu.Unlock()
		var parent trace.SpanContext
		for _, hs := range sr.Ended() {
			if hs.SpanContext().Equal(h) {
				parent = hs.Parent()
			}
		}
		if parent.SpanID() != s.SpanContext().SpanID() || parent.TraceID() != s.SpanContext().TraceID() {
			t.Errorf("job %s: the handler's span has parent %v, want the job's span %v", tc.j.Id, parent, s.SpanContext())
		}
		if !s.StartTime().Before(s.Events()[len(s.Events())-1].Time) || s.StartTime().After(s.Events()[0].Time) {
			t.Errorf("job %s: span starts %v, first event %v: want the span to start with the offer", tc.j.Id, s.StartTime(), s.Events()[0].Time)
		}
	}
	if s := jobSpan(t, sr, failed.Id); !strings.Contains(s.Status().Description, "failed on purpose") {
		t.Errorf("failed job's span status %q, want the job's error", s.Status().Description)
	}
}

// In job processes, the job's span is the worker's, and the handler's
// spans, made in the job process with the global TracerProvider the
// program set there, are its children: the job process continues the
// trace, and flushes the provider before it exits (its batch processor
// would otherwise export nothing).
func TestTraceInJobProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts job processes")
	}
	tp, sr := newRecorderProvider(t)
	spans := filepath.Join(t.TempDir(), "spans")
	srv := workertest.NewServer(t)
	o := processOptions(srv, worker.ProcessOptions{Env: []string{envChildSpans + "=" + spans}})
	o.TracerProvider = tp
	startWorker(t, o, misbehave)
	c := mustConn(t, srv)
	ok, failed := procJob("trace"), procJob("fail")
	dispatch(t, c, ok)
	waitStatus(t, c, ok.Id, livekit.JobStatus_JS_SUCCESS)
	dispatch(t, c, failed)
	waitStatus(t, c, failed.Id, livekit.JobStatus_JS_FAILED)

	s := jobSpan(t, sr, ok.Id)
	checkJobSpan(t, s, ok, "success", []string{"offer", "accept", "assignment", "launch", "end"})
	if got := attr(s, "lkagent.executor"); got != "processes" {
		t.Errorf("executor attribute %q", got)
	}
	checkChildSpan(t, readExported(t, spans), s)
	f := jobSpan(t, sr, failed.Id)
	if f.Status().Code != codes.Error || !strings.Contains(f.Status().Description, "failed on purpose") {
		t.Errorf("failed job's span status %v", f.Status())
	}
}

// checkChildSpan checks that the handler's span exported by a job process
// is a child of the job's span s.
func checkChildSpan(t *testing.T, exported []exportedSpan, s sdktrace.ReadOnlySpan) {
	t.Helper()
	for _, e := range exported {
		if e.name == "handler-work" && e.traceID == s.SpanContext().TraceID().String() {
			if e.parentID != s.SpanContext().SpanID().String() {
				t.Errorf("the handler's span has parent %s, want the job's span %s", e.parentID, s.SpanContext().SpanID())
			}
			return
		}
	}
	t.Errorf("the job process exported %v, no handler span in the job's trace %s", exported, s.SpanContext().TraceID())
}

// Against the real server, in both executors: the job's span records the
// join, and the handler's spans are its children.
func TestTraceRealServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a LiveKit server")
	}
	srv := livekittest.Start(t)
	for _, procs := range []bool{false, true} {
		t.Run(fmt.Sprintf("processes=%v", procs), func(t *testing.T) {
			tp, sr := newRecorderProvider(t)
			spans := filepath.Join(t.TempDir(), "spans")
			agent := livekittest.UniqueName("trace-bot")
			o := worker.Options{URL: srv.URL, APIKey: srv.APIKey, APISecret: srv.APISecret, AgentName: agent,
				Deployment: "staging", TracerProvider: tp, Logger: livekittest.Logger(t), KeepSDKLogger: true}
			handler := func(ctx context.Context, j *job.Job) error {
				if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
					return err
				}
				_, span := tp.Tracer("handler").Start(ctx, "handler-work")
				span.End()
				return nil
			}
			if procs {
				o.Executor = worker.Processes(worker.ProcessOptions{Env: []string{envChildSpans + "=" + spans}})
			}
			startWorker(t, o, handler)
			room := livekittest.UniqueName("room")
			d := srv.Dispatch(t, room, agent, "staging", "trace-join")
			s := jobSpanWith(t, sr, "lkagent.dispatch.id", d.GetId())
			for key, want := range map[string]string{"livekit.room": room, "lkagent.agent.name": agent,
				"lkagent.deployment": "staging", "lkagent.job.outcome": "success"} {
				if got := attr(s, key); got != want {
					t.Errorf("span attribute %s = %q, want %q", key, got, want)
				}
			}
			if !strings.HasPrefix(attr(s, "lkagent.job.id"), "AJ_") {
				t.Errorf("job id attribute %q", attr(s, "lkagent.job.id"))
			}
			if got := eventNames(s); !slices.Equal(got, []string{"offer", "accept", "assignment", "launch", "join", "end"}) {
				t.Errorf("span events %v", got)
			}
			if procs {
				checkChildSpan(t, readExported(t, spans), s)
				return
			}
			var children []sdktrace.ReadOnlySpan
			for _, e := range sr.Ended() {
				if e.Parent().SpanID() == s.SpanContext().SpanID() {
					children = append(children, e)
				}
			}
			if len(children) != 1 || children[0].Name() != "handler-work" {
				t.Errorf("children of the job's span: %v", children)
			}
		})
	}
}

// A queued job that never starts (QueueTimeout) is a span too: it ends
// with the queue wait, failed.
func TestTraceQueueTimeout(t *testing.T) {
	tp, sr := newRecorderProvider(t)
	srv := workertest.NewServer(t)
	o := testOptions(srv, "trace-bot", "staging")
	o.TracerProvider = tp
	o.MaxJobs, o.MaxQueued, o.QueueTimeout = 1, 1, 200*time.Millisecond
	rec := newRecorder()
	defer rec.releaseAll()
	startWorker(t, o, rec.handle)
	c := mustConn(t, srv)
	held, queued := workertest.NewJob("trace-bot", "staging"), workertest.NewJob("trace-bot", "staging")
	dispatch(t, c, held)
	rec.waitStarted(t)
	dispatch(t, c, queued)
	waitStatus(t, c, queued.Id, livekit.JobStatus_JS_FAILED)
	s := jobSpan(t, sr, queued.Id)
	checkJobSpan(t, s, queued, "queue_timeout", []string{"offer", "accept", "assignment", "queue_wait", "end"})
	if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "QueueTimeout") {
		t.Errorf("span status %v, want Error saying why", s.Status())
	}
	rec.releaseAll()
}

// Every job is a span of the worker's TracerProvider (here the SDK's, with
// a recorder; by default OpenTelemetry's global provider), and the
// handler's context carries it: the handler's own spans are its children.
func ExampleOptions_tracerProvider() {
	srv := workertest.NewServer(nil)
	defer srv.Close()

	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())

	w, err := worker.New(worker.Options{
		URL: srv.URL(), APIKey: "key", APISecret: "secret", AgentName: "support-bot", Deployment: "staging",
		TracerProvider: tp,
		Logger:         slog.New(slog.DiscardHandler),
	}, func(ctx context.Context, j *job.Job) error {
		// Usually otel.Tracer(name), from the global provider the program
		// set; here the provider of the job's span.
		_, span := trace.SpanFromContext(ctx).TracerProvider().Tracer("support-bot").Start(ctx, "answer")
		defer span.End()
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	conn, _ := srv.WaitWorker(ctx)
	j := workertest.NewJob("support-bot", "staging")
	_, _ = conn.Dispatch(ctx, j)
	_, _ = conn.WaitJobStatus(ctx, j.Id, livekit.JobStatus_JS_SUCCESS)
	_ = w.Stop(ctx)

	var jobSpan, answer sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		switch s.Name() {
		case worker.SpanName:
			jobSpan = s
		case "answer":
			answer = s
		}
	}
	fmt.Println(jobSpan.Name(), attr(jobSpan, "lkagent.deployment"), attr(jobSpan, "lkagent.job.outcome"), eventNames(jobSpan))
	fmt.Println("answer is its child:", answer.Parent().SpanID() == jobSpan.SpanContext().SpanID())
	// Output:
	// lkagent.job staging success [offer accept assignment launch end]
	// answer is its child: true
}
