package worker_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// A Registerer that is no Gatherer (the usual way to add pod labels)
// receives the worker's collectors with its labels, and /metrics still
// serves the worker's own registry, with Go's and the process's metrics.
func TestMetricsWithAWrappingRegisterer(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	outer := prometheus.NewRegistry()
	o := testOptions(srv, "wrapped-bot", "staging")
	o.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"pod": "agent-7f9c"}, outer)
	r := startWorker(t, o, newGated().handle)
	mustConn(t, srv)
	eventually(t, "the worker to see its registration", func() bool { return r.w.Snapshot().Registered })

	rec := httptest.NewRecorder()
	r.w.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics = %d", rec.Code)
	}
	for _, want := range []string{`lkagent_connected{agent_name="wrapped-bot",deployment="staging"} 1`, "go_goroutines", "process_"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	fams, err := outer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range fams {
		if f.GetName() != "lkagent_connected" {
			continue
		}
		for _, m := range f.GetMetric() {
			found = found || hasLabel(m, "pod", "agent-7f9c")
		}
	}
	if !found {
		t.Errorf("the wrapping Registerer did not get lkagent_connected with its pod label")
	}
}

// An address that is no LiveKit agent endpoint ends Run at once with an
// error that says what to fix, instead of retrying for ever.
func TestMisconfiguredURLEndsRun(t *testing.T) {
	t.Parallel()
	notFound := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notFound.Close)
	fake := workertest.NewServer(t)
	for _, tc := range []struct {
		name, url, hint string
	}{
		{"404 on /agent", "ws" + strings.TrimPrefix(notFound.URL, "http") + "/livekit", "base URL"},
		{"wss to a plain server", "wss" + strings.TrimPrefix(fake.URL(), "ws"), "use ws://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := testOptions(fake, "lost-bot", "")
			o.URL = tc.url
			o.Logger = slog.New(newLogRecorder(t))
			w, err := worker.New(o, newGated().handle)
			if err != nil {
				t.Fatal(err)
			}
			ctx := waitCtx(t)
			err = w.Run(ctx)
			if ctx.Err() != nil {
				t.Fatalf("Run kept retrying a permanent error: %v", err)
			}
			if !errors.Is(err, worker.ErrMisconfigured) || !strings.Contains(err.Error(), tc.hint) {
				t.Fatalf("Run = %v, want ErrMisconfigured saying %q", err, tc.hint)
			}
		})
	}
}

// A LoadFunc that never returns stalls nothing but its own samples: the
// worker registers, answers offers and runs jobs, and /healthz says what
// is stuck. A panicking LoadFunc is logged and its last value kept.
func TestStuckOrPanickingLoadFunc(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	o := testOptions(srv, "loadfn-bot", "")
	o.StatusInterval = 100 * time.Millisecond
	o.ShutdownTimeout = 500 * time.Millisecond // then Run leaves the stuck LoadFunc behind
	o.LoadFunc = func() float64 { <-stuck; return 0 }
	r := startWorker(t, o, newRecorder().handle)
	c := mustConn(t, srv)
	j := workertest.NewJob("loadfn-bot", "")
	if res := dispatch(t, c, j); !res.GetAvailable() {
		t.Fatal("offer declined")
	}
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_RUNNING)
	eventually(t, "/healthz to name the stuck LoadFunc", func() bool {
		rec := httptest.NewRecorder()
		r.w.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code == http.StatusServiceUnavailable && strings.Contains(rec.Body.String(), "LoadFunc")
	})

	srv2 := workertest.NewServer(t)
	var calls atomic.Int32
	o2 := testOptions(srv2, "panic-bot", "")
	o2.LoadFunc = func() float64 {
		if calls.Add(1) > 1 {
			panic("load meter broke")
		}
		return 0.25
	}
	r2 := startWorker(t, o2, newGated().handle)
	c2 := mustConn(t, srv2)
	eventually(t, "the panic logged", func() bool { return r2.logs.count(slog.LevelError, "LoadFunc failed") > 0 })
	if _, err := c2.WaitWorkerStatus(waitCtx(t), func(u *livekit.UpdateWorkerStatus) bool { return u.GetLoad() == 0.25 }); err != nil {
		t.Fatalf("the last good load was not kept: %v", err)
	}
}

// A user's slow slog handler does not hold up the protocol: the read loop
// logs nothing itself, so pongs and offers go on while a log line waits.
func TestSlowLogHandlerDoesNotStallTheConnection(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	block := make(chan struct{})
	o := testOptions(srv, "slowlog-bot", "")
	o.PingInterval, o.PongTimeout = 50*time.Millisecond, time.Second
	var blocking atomic.Bool
	o.Logger = slog.New(&gateHandler{Handler: slog.NewTextHandler(io.Discard, nil), block: block, on: &blocking})
	w, err := worker.New(o, newGated().handle)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		close(block)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	c := mustConn(t, srv)
	blocking.Store(true)
	// An assignment nobody accepted makes the worker log a warning: that
	// line blocks in the handler, on a goroutine of its own.
	stray := workertest.NewJob("slowlog-bot", "")
	if err := c.Assign(waitCtx(t), stray, workertest.Token); err != nil {
		t.Fatal(err)
	}
	select { // a stalled read loop would miss every pong by then
	case <-c.Done():
		t.Fatalf("the connection ended while a log handler blocked: %v", c.Err())
	case <-time.After(3 * (o.PingInterval + o.PongTimeout)):
	}
	if c.Err() != nil || len(srv.Workers()) != 1 {
		t.Fatalf("the connection did not survive a blocked log handler: %v, %d registrations", c.Err(), len(srv.Workers()))
	}
	if _, err := c.WaitJobStatus(waitCtx(t), stray.GetId(), livekit.JobStatus_JS_FAILED); err != nil {
		t.Fatalf("the unexpected assignment was not reported: %v", err)
	}
}

// gateHandler blocks Handle while on is set, until block is closed.
type gateHandler struct {
	slog.Handler
	block chan struct{}
	on    *atomic.Bool
}

func (h *gateHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.on.Load() {
		<-h.block
	}
	return h.Handler.Handle(ctx, r)
}

func (h *gateHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &gateHandler{Handler: h.Handler.WithAttrs(as), block: h.block, on: h.on}
}

func (h *gateHandler) WithGroup(n string) slog.Handler {
	return &gateHandler{Handler: h.Handler.WithGroup(n), block: h.block, on: h.on}
}
