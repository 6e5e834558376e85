//go:build linux

package jobproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
)

// The test binary is its own job process: a child serves a test job whose
// behaviour the job's metadata names.
func TestMain(m *testing.M) {
	if IsChild() {
		os.Exit(childMain())
	}
	if os.Getenv(envAsParent) != "" {
		os.Exit(parentMain())
	}
	os.Exit(m.Run())
}

// Environment of test children.
const (
	envFailFile   = "JOBPROC_TEST_FAIL_FILE"   // if this file exists, exit 1 at once
	envStartDelay = "JOBPROC_TEST_START_DELAY" // sleep this long before serving
	envAsParent   = "JOBPROC_TEST_AS_PARENT"   // run a pool, print its pids, wait to be killed
	envPrepare    = "JOBPROC_TEST_PREPARE"     // "ok": serve with a Prepare hook; "fail": one that fails
)

// prepared is set by the Prepare hook of a test child.
var prepared atomic.Bool

// prepareFromEnv is the Prepare hook envPrepare asks for, or nil.
func prepareFromEnv() func(context.Context) error {
	switch os.Getenv(envPrepare) {
	case "ok":
		return func(context.Context) error { prepared.Store(true); return nil }
	case "fail":
		return func(context.Context) error { return errors.New("prepare failed on purpose") }
	}
	return nil
}

// parentMain is a parent of job processes that a test kills: it keeps a
// warm process and one running a job that ignores cancellation, prints
// their pids, and waits.
func parentMain() int {
	p, err := New(Options{Idle: 1, Args: []string{}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pr, err := p.Start(context.Background(), spec("hang"), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for p.Stats().Ready < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	// The warm one: the pool may have started more processes than these
	// two (a replacement of the one the job took), so read it, not guess it.
	p.mu.Lock()
	warm := p.ready[0].pid
	p.mu.Unlock()
	fmt.Printf("%d %d\n", pr.Pid(), warm)
	time.Sleep(time.Hour)
	return 0
}

// sawParentGone is set by a job that saw its context cancelled because the
// parent went away.
var sawParentGone bool

func childMain() int {
	if f := os.Getenv(envFailFile); f != "" {
		if _, err := os.Stat(f); err == nil {
			fmt.Fprintln(os.Stderr, "test child: told to fail before serving")
			return 1
		}
	}
	if d, err := time.ParseDuration(os.Getenv(envStartDelay)); err == nil {
		time.Sleep(d)
	}
	err := ServeOptions{Prepare: prepareFromEnv()}.Serve(context.Background(), testJob)
	switch {
	case errors.Is(err, ErrParentGone) && sawParentGone:
		return 7
	case err != nil:
		fmt.Fprintln(os.Stderr, "test child:", err)
		return 1
	}
	return 0
}

// ballast keeps allocated memory alive.
var ballast [][]byte

// testJob behaves as the job's metadata says: "name" or "name:arg".
func testJob(ctx context.Context, s Spec, r *Reporter) Outcome {
	name, arg, _ := strings.Cut(s.Job.GetMetadata(), ":")
	switch name {
	case "ok":
		return Success()
	case "error":
		return Failure(errors.New("boom"))
	case "panic":
		panic("kaboom")
	case "mapwrites":
		m := map[int]int{}
		for range 2 {
			go func() {
				for i := 0; ; i++ {
					m[i%1024] = i
				}
			}()
		}
		time.Sleep(time.Hour)
	case "gopanic":
		go func() { panic("unrecovered on another goroutine") }()
		time.Sleep(time.Hour)
	case "exit3":
		os.Exit(3)
	case "sigkill":
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Hour)
	case "alloc":
		// Allocate arg MiB in 4 MiB chunks, touching every page, then
		// report and wait to be cancelled.
		n, _ := strconv.Atoi(arg)
		for i := 0; i < n; i += 4 {
			b := make([]byte, 4<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			ballast = append(ballast, b)
			time.Sleep(5 * time.Millisecond)
		}
		_ = r.Status(&livekit.UpdateJobStatus{JobId: s.Job.GetId(), Status: livekit.JobStatus_JS_RUNNING, Error: "allocated"})
		<-ctx.Done()
		return Success()
	case "hang":
		time.Sleep(time.Hour)
	case "cancel":
		<-ctx.Done()
		var ce *CauseError
		if !errors.As(context.Cause(ctx), &ce) {
			return Failure(fmt.Errorf("cause is %v, not a *CauseError", context.Cause(ctx)))
		}
		return Failure(fmt.Errorf("cancelled with %s: %s", ce.Code, ce.Text))
	case "log":
		log := slog.New(r.Handler()).With("job", "j1")
		log.Debug("a debug line")
		log.Info("hello from the job", "n", 42, slog.Group("g", "k", "v"), "d", time.Second,
			"err", errors.New("e1"), "u", uint64(7), "f", 1.5, "b", true)
		log.WithGroup("grp").Warn("grouped", "x", 1)
		return Success()
	case "status":
		_ = r.Status(&livekit.UpdateJobStatus{JobId: s.Job.GetId(), Status: livekit.JobStatus_JS_RUNNING,
			JoinTiming: &livekit.JobJoinTiming{AcceptedUs: s.Timing.GetAcceptedUs(), ConnectedUs: time.Since(s.Base).Microseconds()}})
		<-ctx.Done()
		return Outcome{Timing: &livekit.JobJoinTiming{ConnectedUs: 99}}
	case "stderr":
		for i := range 30 {
			fmt.Fprintf(os.Stderr, "stderr line %d\n", i)
		}
		return Failure(errors.New("wrote to stderr"))
	case "echo":
		return Failure(fmt.Errorf("identity=%s url=%s token=%s room=%s extra=%s traceparent=%s tracestate=%s accepted=%d base_age_ms=%d",
			s.Identity, s.URL, s.Token, s.Job.GetRoom().GetName(), s.Extra, s.TraceParent, s.TraceState, s.Timing.GetAcceptedUs(),
			time.Since(s.Base).Milliseconds()))
	case "prepared":
		if !prepared.Load() {
			return Failure(errors.New("the Prepare hook did not run before the job"))
		}
		return Success()
	case "parentgone":
		<-ctx.Done()
		var ce *CauseError
		sawParentGone = errors.As(context.Cause(ctx), &ce) && ce.Code == CodeParentGone
		return Success()
	case "closefd":
		r.c.conn.Close()
		time.Sleep(time.Hour)
	case "early":
		// Report the end ahead, wait up to arg for the parent, say how
		// that went, and return another outcome, which must not be sent.
		d, _ := time.ParseDuration(arg)
		t0 := time.Now()
		ok := r.End(Outcome{Error: "early end", Cause: "terminated", Timing: &livekit.JobJoinTiming{ConnectedUs: 77}}, d)
		_ = r.Status(&livekit.UpdateJobStatus{JobId: s.Job.GetId(), Status: livekit.JobStatus_JS_RUNNING,
			Error: fmt.Sprintf("confirmed=%t waited=%s", ok, time.Since(t0).Round(time.Millisecond))})
		return Failure(errors.New("the outcome returned after End"))
	case "sleep":
		d, _ := time.ParseDuration(arg)
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
		return Success()
	}
	return Failure(fmt.Errorf("unknown test job %q", name))
}

// Parent-side helpers.

const secretToken = "secret-token-4f7a"

const testTraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

func spec(behaviour string) Spec {
	return Spec{
		Job:         &livekit.Job{Id: "AJ_test", Room: &livekit.Room{Name: "room-1"}, Metadata: behaviour},
		Identity:    "agent-1",
		URL:         "ws://127.0.0.1:7880",
		Token:       secretToken,
		Base:        time.Now().Add(-time.Second),
		Timing:      &livekit.JobJoinTiming{AcceptedUs: 1234},
		Extra:       []byte("xtra"),
		TraceParent: testTraceParent,
		TraceState:  "vendor=x",
	}
}

// testOptions are generous: this runs on slow, shared machines.
func testOptions(log *slog.Logger) Options {
	return Options{
		StartTimeout: 60 * time.Second,
		PingInterval: 100 * time.Millisecond,
		PingTimeout:  30 * time.Second,
		ExitTimeout:  5 * time.Second,
		Logger:       log,
	}
}

// newPool starts a pool that the test closes, then checks that none of its
// goroutines or processes is left.
func newPool(t testing.TB, o Options) *Pool {
	t.Helper()
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	openPools.Add(1)
	t.Cleanup(func() { closePool(t, p) })
	return p
}

// openPools counts the pools newPool made and closePool has not closed:
// goroutines are checked once none is open.
var openPools atomic.Int32

func closePool(t testing.TB, p *Pool) {
	t.Helper()
	pids := p.pidsSeen()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !p.isClosed() {
		_ = p.Close(ctx)
		if openPools.Add(-1) == 0 {
			checkNoGoroutines(t)
		}
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("job process %d still exists after Close", pid)
		}
	}
}

func (p *Pool) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// pidsSeen lists the pool's current processes.
func (p *Pool) pidsSeen() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var pids []int
	for pr := range p.all {
		pids = append(pids, pr.pid)
	}
	return pids
}

func alive(pid int) bool {
	return syscall.Kill(pid, 0) == nil
}

// checkNoGoroutines fails if a goroutine of this package is still running.
func checkNoGoroutines(t testing.TB) {
	t.Helper()
	var stacks string
	for range 50 {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "jobproc.(*Proc)") && !strings.Contains(stacks, "jobproc.(*Pool)") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("goroutines of the pool left after Close:\n%s", stacks)
}

func start(t testing.TB, p *Pool, behaviour string, log *slog.Logger) *Proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pr, err := p.Start(ctx, spec(behaviour), log)
	if err != nil {
		t.Fatalf("Start(%s): %v", behaviour, err)
	}
	return pr
}

func wait(t testing.TB, pr *Proc, within time.Duration) End {
	t.Helper()
	select {
	case <-pr.Done():
		return pr.Wait()
	case <-time.After(within):
		pr.Kill("test timed out")
		t.Fatalf("job process %d did not end within %s", pr.Pid(), within)
		return End{}
	}
}

// waitFor polls cond until it holds or within passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// capture is a slog.Handler that keeps records, their attributes
// flattened to "group.key" = value text.
type capture struct {
	level slog.Level
	pre   []slog.Attr
	st    *captureStore
}

type captureStore struct {
	mu   sync.Mutex
	recs []rec
}

type rec struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newCapture(level slog.Level) *capture { return &capture{level: level, st: &captureStore{}} }

func (c *capture) Enabled(_ context.Context, l slog.Level) bool { return l >= c.level }

func (c *capture) WithAttrs(as []slog.Attr) slog.Handler {
	c2 := *c
	c2.pre = append(slices.Clone(c.pre), as...)
	return &c2
}

func (c *capture) WithGroup(string) slog.Handler { return c }

func (c *capture) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{}
	var add func(prefix string, a slog.Attr)
	add = func(prefix string, a slog.Attr) {
		v := a.Value.Resolve()
		if v.Kind() == slog.KindGroup {
			for _, g := range v.Group() {
				add(prefix+a.Key+".", g)
			}
			return
		}
		m[prefix+a.Key] = v.String()
	}
	for _, a := range c.pre {
		add("", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		add("", a)
		return true
	})
	c.st.mu.Lock()
	c.st.recs = append(c.st.recs, rec{level: r.Level, msg: r.Message, attrs: m})
	c.st.mu.Unlock()
	return nil
}

func (c *capture) records() []rec {
	c.st.mu.Lock()
	defer c.st.mu.Unlock()
	return slices.Clone(c.st.recs)
}

func (c *capture) find(msg string) (rec, bool) {
	for _, r := range c.records() {
		if r.msg == msg {
			return r, true
		}
	}
	return rec{}, false
}
