//go:build linux

package jobproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
)

// Each way a job can end is reported with its kind and cause.
func TestEnds(t *testing.T) {
	log := newCapture(slog.LevelInfo)
	o := testOptions(slog.New(log))
	o.Idle = 1
	p := newPool(t, o)
	cases := []struct {
		job      string
		kind     EndKind
		err      string // in End.Error
		exitCode int
		signal   string
		stderr   string // in End.Stderr
	}{
		{job: "ok", kind: EndSucceeded, exitCode: 0},
		{job: "error", kind: EndFailed, err: "boom", exitCode: 0},
		{job: "panic", kind: EndPanicked, err: "kaboom", exitCode: 0},
		{job: "mapwrites", kind: EndFatal, err: "fatal error: concurrent map writes", exitCode: 2,
			stderr: "fatal error: concurrent map writes"},
		{job: "gopanic", kind: EndFatal, err: "panic: unrecovered on another goroutine", exitCode: 2,
			stderr: "panic: unrecovered on another goroutine"},
		{job: "exit3", kind: EndExited, err: "exited with code 3 before the job ended", exitCode: 3},
		{job: "sigkill", kind: EndSignaled, err: "killed by signal SIGKILL", exitCode: -1, signal: "SIGKILL"},
		{job: "stderr", kind: EndFailed, err: "wrote to stderr", stderr: "stderr line 29\n"},
		{job: "nosuchjob", kind: EndFailed, err: `unknown test job "nosuchjob"`},
	}
	for _, c := range cases {
		t.Run(c.job, func(t *testing.T) {
			pr := start(t, p, c.job, nil)
			e := wait(t, pr, 60*time.Second)
			if e.Kind != c.kind {
				t.Fatalf("kind %v, want %v; end: %+v", e.Kind, c.kind, e)
			}
			if !strings.Contains(e.Error, c.err) {
				t.Errorf("error %q, want it to contain %q", e.Error, c.err)
			}
			if e.ExitCode != c.exitCode || e.Signal != c.signal {
				t.Errorf("exit code %d signal %q, want %d %q", e.ExitCode, e.Signal, c.exitCode, c.signal)
			}
			if !strings.Contains(e.Stderr, c.stderr) {
				t.Errorf("stderr tail does not contain %q:\n%s", c.stderr, e.Stderr)
			}
			if e.Pid != pr.Pid() {
				t.Errorf("pid %d, want %d", e.Pid, pr.Pid())
			}
			if (e.Err() == nil) != (c.kind == EndSucceeded) {
				t.Errorf("Err() = %v for %v", e.Err(), e.Kind)
			}
			if c.kind == EndPanicked && !strings.Contains(string(e.Stack), "testJob") {
				t.Errorf("panic stack does not show the job:\n%s", e.Stack)
			}
			if strings.Contains(e.String(), secretToken) || strings.Contains(e.Stderr, secretToken) {
				t.Errorf("the token leaked into the end: %+v", e)
			}
			t.Logf("%v: %s", e.Kind, e)
		})
	}
	if got := p.Healthy(); got != nil {
		t.Errorf("jobs that died made the pool unhealthy: %v", got)
	}
	// The crash output reached the logger, at Warn.
	found := false
	for _, r := range log.records() {
		if r.msg == "job process stderr" && strings.Contains(r.attrs["line"], "concurrent map writes") {
			found = r.level == slog.LevelWarn
		}
	}
	if !found {
		t.Error("the fatal error's stderr line was not logged at Warn")
	}
}

// The stderr tail keeps the runtime's crash line and the lines after it
// when a long traceback scrolled them out.
func TestTailKeepsCrashLine(t *testing.T) {
	var tl tail
	tl.add("starting")
	tl.add("fatal error: concurrent map writes")
	tl.add("")
	tl.add("goroutine 7 [running]:")
	for i := range 100 {
		tl.add("frame " + strings.Repeat("x", i%50))
	}
	s := tl.String()
	if !strings.HasPrefix(s, "fatal error: concurrent map writes\n\ngoroutine 7 [running]:\n") {
		t.Errorf("tail does not lead with the crash:\n%s", s)
	}
	if !strings.Contains(s, "…\n") || strings.Count(s, "\n") > tailLines || len(s) > tailBytes+100 {
		t.Errorf("tail out of bounds (%d lines, %d bytes):\n%s", strings.Count(s, "\n"), len(s), s)
	}
	var short tail
	short.add("a")
	short.add("panic: x")
	short.add("b")
	if got := short.String(); got != "a\npanic: x\nb\n" {
		t.Errorf("short tail %q", got)
	}
	for line, want := range map[string]bool{
		"fatal error: out of memory": true, "panic: boom": true, "SIGSEGV: segmentation violation": true,
		"SIGABRT: abort": true, "Signal: x": false, "SIG: x": false, "level=INFO msg=panic: no": false,
	} {
		if crashLine(line) != want {
			t.Errorf("crashLine(%q) = %v", line, !want)
		}
	}
}

// The spec reaches the child intact, with the base translated to its clock.
func TestSpecReachesChild(t *testing.T) {
	p := newPool(t, testOptions(nil))
	e := wait(t, start(t, p, "echo", nil), 60*time.Second)
	for _, want := range []string{"identity=agent-1", "url=ws://127.0.0.1:7880", "token=" + secretToken,
		"room=room-1", "extra=xtra", "traceparent=" + testTraceParent, "tracestate=vendor=x", "accepted=1234", "base_age_ms="} {
		if !strings.Contains(e.Error, want) {
			t.Errorf("child saw %q; want %q", e.Error, want)
		}
	}
	// The base was a second before the spec was made; the child's view of
	// it must be about that old, not skewed by the process start.
	_, age, _ := strings.Cut(e.Error, "base_age_ms=")
	var ms int
	for _, c := range age {
		ms = ms*10 + int(c-'0')
	}
	if ms < 1000 || ms > 60000 {
		t.Errorf("base age in the child %d ms, want about 1000 ms", ms)
	}
	if strings.Contains(spec("x").String(), secretToken) {
		t.Error("Spec.String shows the token")
	}
	if strings.Contains(spec("x").LogValue().String(), secretToken) {
		t.Error("Spec.LogValue shows the token")
	}
}

// Cancel's cause reaches the job's context.
func TestCancelCause(t *testing.T) {
	p := newPool(t, testOptions(nil))
	pr := start(t, p, "cancel", nil)
	waitStarted(t, pr)
	if err := pr.Cancel(Cause{Code: "terminated", Text: "job terminated by server"}); err != nil {
		t.Fatal(err)
	}
	_ = pr.Cancel(Cause{Code: "second", Text: "not seen"})
	e := wait(t, pr, 60*time.Second)
	if e.Kind != EndFailed || e.Error != "cancelled with terminated: job terminated by server" {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
	if err := pr.Cancel(Cause{Code: "late"}); err == nil {
		t.Error("Cancel after the end did not fail")
	}
}

func waitStarted(t testing.TB, pr *Proc) Event {
	t.Helper()
	select {
	case ev := <-pr.Events():
		if ev.Kind != EventStarted {
			t.Fatalf("first event %v, want EventStarted", ev.Kind)
		}
		return ev
	case <-time.After(60 * time.Second):
		t.Fatal("no EventStarted")
	}
	return Event{}
}

// A job that ignores its cancellation is killed by Stop after the grace,
// and by Kill at once.
func TestStopKillsHangingJob(t *testing.T) {
	p := newPool(t, testOptions(nil))
	pr := start(t, p, "hang", nil)
	waitStarted(t, pr)
	began := time.Now()
	e := pr.Stop(Cause{Code: "terminated"}, 300*time.Millisecond)
	if e.Kind != EndKilled || !strings.Contains(e.Error, "did not end within 300ms of being cancelled (terminated)") {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
	if e.Signal != "SIGKILL" {
		t.Errorf("signal %q", e.Signal)
	}
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Errorf("killed after %s, before the grace", d)
	}
	pr = start(t, p, "hang", nil)
	pr.Kill("shutdown timeout")
	if e := wait(t, pr, 60*time.Second); e.Kind != EndKilled || e.Error != "shutdown timeout" {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
	// A job that ends within the grace is not killed.
	pr = start(t, p, "cancel", nil)
	waitStarted(t, pr)
	if e := pr.Stop(Cause{Code: "drain_timeout"}, 60*time.Second); e.Kind != EndFailed {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
}

// A process past the memory limit is killed, and the end says so.
func TestMemoryLimit(t *testing.T) {
	o := testOptions(nil)
	o.MemoryInterval = 50 * time.Millisecond
	o.MemoryLimit = 64 << 20
	o.Idle = 1
	p := newPool(t, o)
	waitFor(t, 60*time.Second, "a warm process", func() bool { return p.Stats().Ready == 1 })
	if idle := readyRSS(p); idle > o.MemoryLimit/2 {
		// The race detector's runtime takes more; leave the job room.
		o.MemoryLimit = idle + 64<<20
		closePool(t, p)
		p = newPool(t, o)
	}
	pr := start(t, p, "alloc:200", nil)
	e := wait(t, pr, 60*time.Second)
	if e.Kind != EndMemoryLimit {
		t.Fatalf("end %v %q", e.Kind, e.Error)
	}
	if e.RSS <= o.MemoryLimit || !strings.Contains(e.Error, "passed the memory limit of") {
		t.Errorf("RSS %d (limit %d), error %q", e.RSS, o.MemoryLimit, e.Error)
	}
	t.Logf("%s (peak %s)", e, mib(e.MaxRSS))
}

// readyRSS is the resident set of a warm process of p.
func readyRSS(p *Pool) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ready) == 0 {
		return 0
	}
	return readRSS(p.ready[0].pid)
}

// Past MemoryWarn, a job is warned about once, by an event and a log line.
func TestMemoryWarn(t *testing.T) {
	log := newCapture(slog.LevelInfo)
	o := testOptions(slog.New(log))
	o.MemoryInterval = 50 * time.Millisecond
	o.Idle = 1
	p := newPool(t, o)
	waitFor(t, 60*time.Second, "a warm process", func() bool { return p.Stats().Ready == 1 })
	idle := readyRSS(p)
	closePool(t, p)
	o.MemoryWarn = idle + 40<<20
	p = newPool(t, o)
	pr := start(t, p, "alloc:100", slog.New(log).With("job_id", "AJ_test"))
	var warns, started int
	for ev := range pr.Events() {
		switch ev.Kind {
		case EventStarted:
			started++
		case EventMemoryWarn:
			warns++
			if ev.RSS <= o.MemoryWarn {
				t.Errorf("warned at %d, below %d", ev.RSS, o.MemoryWarn)
			}
		case EventStatus:
			// Allocated: stay a few checks past the level, then end.
			time.Sleep(300 * time.Millisecond)
			_ = pr.Cancel(Cause{Code: "done"})
		}
	}
	if e := pr.Wait(); e.Kind != EndSucceeded {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
	if warns != 1 || started != 1 {
		t.Errorf("%d warnings, %d starts; want 1, 1", warns, started)
	}
	r, ok := log.find("job process memory above the warning level")
	if !ok || r.level != slog.LevelWarn || r.attrs["job_id"] != "AJ_test" {
		t.Errorf("warning line %+v", r)
	}
}

// Statuses the job reports arrive as events, after EventStarted, with join
// timing in the parent's units.
func TestStatusEvents(t *testing.T) {
	p := newPool(t, testOptions(nil))
	s := spec("status")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pr, err := p.Start(ctx, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitStarted(t, pr)
	var ev Event
	select {
	case ev = <-pr.Events():
	case <-time.After(60 * time.Second):
		t.Fatal("no status")
	}
	now := time.Since(s.Base).Microseconds()
	u := ev.Status
	if ev.Kind != EventStatus || u.GetStatus() != livekit.JobStatus_JS_RUNNING || u.GetJobId() != "AJ_test" {
		t.Fatalf("event %+v", ev)
	}
	if c := u.GetJoinTiming().GetConnectedUs(); c < 1_000_000 || c > now {
		t.Errorf("connected at %d µs since base; want within [1e6, %d]", c, now)
	}
	if a := u.GetJoinTiming().GetAcceptedUs(); a != 1234 {
		t.Errorf("accepted %d", a)
	}
	_ = pr.Cancel(Cause{Code: "terminated"})
	e := wait(t, pr, 60*time.Second)
	if e.Kind != EndSucceeded || e.Timing.GetConnectedUs() != 99 {
		t.Errorf("end %v, timing %v", e.Kind, e.Timing)
	}
	if ev, open := <-pr.Events(); !open || ev.Kind != EventEnd || ev.End.Timing.GetConnectedUs() != 99 {
		t.Errorf("event %+v after the statuses; want the end", ev)
	}
	if _, open := <-pr.Events(); open {
		t.Error("events not closed after the end")
	}
}

// The job's slog records and its stderr reach the parent's logger; the
// token does not.
func TestLogsRelayed(t *testing.T) {
	poolLog := newCapture(slog.LevelInfo)
	p := newPool(t, testOptions(slog.New(poolLog)))
	jobLog := newCapture(slog.LevelInfo)
	e := wait(t, start(t, p, "log", slog.New(jobLog).With("job_id", "AJ_test")), 60*time.Second)
	if e.Kind != EndSucceeded {
		t.Fatalf("end %v %q", e.Kind, e.Error)
	}
	r, ok := jobLog.find("hello from the job")
	want := map[string]string{"job_id": "AJ_test", "job": "j1", "n": "42", "g.k": "v", "d": "1s", "err": "e1",
		"u": "7", "f": "1.5", "b": "true"}
	if !ok || r.level != slog.LevelInfo {
		t.Fatalf("record %+v", r)
	}
	for k, v := range want {
		if r.attrs[k] != v {
			t.Errorf("attr %s = %q, want %q (all: %v)", k, r.attrs[k], v, r.attrs)
		}
	}
	if r, ok := jobLog.find("grouped"); !ok || r.level != slog.LevelWarn || r.attrs["grp.x"] != "1" || r.attrs["job"] != "j1" {
		t.Errorf("grouped record %+v", r)
	}
	if _, ok := jobLog.find("a debug line"); ok {
		t.Error("a debug record passed an Info logger")
	}

	pr := start(t, p, "stderr", slog.New(jobLog).With("job_id", "AJ_2"))
	wait(t, pr, 60*time.Second)
	n := 0
	for _, r := range jobLog.records() {
		if r.msg == "job process stderr" && strings.HasPrefix(r.attrs["line"], "stderr line ") && r.attrs["job_id"] == "AJ_2" {
			n++
		}
	}
	if n != 30 {
		t.Errorf("%d stderr lines relayed, want 30", n)
	}
	for _, c := range []*capture{poolLog, jobLog} {
		for _, r := range c.records() {
			for k, v := range r.attrs {
				if strings.Contains(v, secretToken) || strings.Contains(r.msg, secretToken) {
					t.Errorf("token logged: %s %s=%s", r.msg, k, v)
				}
			}
		}
	}
}

// A process that stops answering pings is killed.
func TestUnresponsive(t *testing.T) {
	o := testOptions(nil)
	o.PingTimeout = 500 * time.Millisecond
	p := newPool(t, o)
	pr := start(t, p, "cancel", nil)
	waitStarted(t, pr)
	if err := syscall.Kill(pr.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	e := wait(t, pr, 60*time.Second)
	if e.Kind != EndUnresponsive || !strings.Contains(e.Error, "answered no ping for") {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
}

// A process whose channel closes while it keeps running is killed as lost.
func TestLostChannel(t *testing.T) {
	o := testOptions(nil)
	o.ExitTimeout = 300 * time.Millisecond
	p := newPool(t, o)
	e := wait(t, start(t, p, "closefd", nil), 60*time.Second)
	if e.Kind != EndLost {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
}

// A child whose parent goes away cancels its job with CodeParentGone.
func TestParentGone(t *testing.T) {
	p := newPool(t, testOptions(nil))
	pr := start(t, p, "parentgone", nil)
	waitStarted(t, pr)
	pr.conn.Close()
	e := wait(t, pr, 60*time.Second)
	if e.Kind != EndExited || e.ExitCode != 7 {
		t.Errorf("end %v %q (exit code %d; 7 means the job saw the parent go)", e.Kind, e.Error, e.ExitCode)
	}
}

// Serve outside a job process fails.
func TestServeOutsideChild(t *testing.T) {
	if IsChild() {
		t.Fatal("the test process thinks it is a job process")
	}
	err := Serve(context.Background(), func(context.Context, Spec, *Reporter) Outcome { return Success() })
	if err == nil {
		t.Fatal("Serve outside a job process succeeded")
	}
}

func TestEndStrings(t *testing.T) {
	for _, c := range []struct {
		e    End
		want string
	}{
		{End{Kind: EndFailed, Error: "boom"}, "boom"},
		{End{Kind: EndPanicked, Error: "x"}, "job handler panicked: x"},
		{End{Kind: EndFatal, Error: "fatal error: concurrent map writes"}, "job process crashed: fatal error: concurrent map writes"},
		{End{Kind: EndExited, Error: "exited with code 3"}, "job process exited with code 3"},
		{End{Kind: EndMemoryLimit, Error: "m"}, "job process killed: m"},
		{End{Kind: EndStartFailed, Error: "s"}, "job process did not start: s"},
	} {
		var ee *EndError
		if err := c.e.Err(); !errors.As(err, &ee) || err.Error() != c.want {
			t.Errorf("%v: %v, want %q", c.e.Kind, err, c.want)
		}
	}
	if EndMemoryLimit.String() != "memory_limit" || EndKind(99).String() != "EndKind(99)" {
		t.Error("EndKind names")
	}
}

// Job processes die with their parent, however it dies: the running one
// ignores its cancellation, so only the parent-death signal ends it before
// the child's own orphanGrace.
func TestChildrenDieWithParent(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envAsParent+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	var running, warm int
	if _, err := fmt.Fscan(out, &running, &warm); err != nil {
		t.Fatalf("the parent printed no pids: %v", err)
	}
	if !alive(running) || !alive(warm) {
		t.Fatalf("job processes %d, %d not running", running, warm)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitFor(t, orphanGrace/2, "the job processes to die", func() bool { return gone(running) && gone(warm) })
}

// gone says whether pid no longer runs (it may await reaping by whoever
// inherited it).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z") || strings.HasPrefix(rest, "X")
}

// Signals for the service or session do not reach the job: the parent
// decides when it stops.
func TestSignalsIgnored(t *testing.T) {
	p := newPool(t, testOptions(nil))
	pr := start(t, p, "cancel", nil)
	waitStarted(t, pr)
	for _, s := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP} {
		if err := syscall.Kill(pr.Pid(), s); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-pr.Done():
		t.Fatalf("the job process ended on a signal: %+v", pr.Wait())
	case <-time.After(500 * time.Millisecond):
	}
	_ = pr.Cancel(Cause{Code: "done", Text: "by the parent"})
	if e := wait(t, pr, 60*time.Second); e.Kind != EndFailed || e.Error != "cancelled with done: by the parent" {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
}

// A job that reports its end ahead (Reporter.End) waits for the parent's
// Reported before it goes on, and the end it reported is the job's end,
// not the outcome its function returns later; without Reported it goes on
// after its wait.
func TestEndReportedAhead(t *testing.T) {
	for _, tc := range []struct {
		name    string
		wait    string
		confirm bool
	}{
		{name: "confirmed", wait: "4s", confirm: true},
		{name: "unconfirmed", wait: "300ms", confirm: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, testOptions(nil))
			pr := start(t, p, "early:"+tc.wait, nil)
			waitStarted(t, pr)
			ev := nextEvent(t, pr)
			if ev.Kind != EventEnd || ev.End.Kind != EndFailed || ev.End.Error != "early end" || ev.End.Cause != "terminated" ||
				ev.End.Timing.GetConnectedUs() != 77 || ev.End.Pid != pr.Pid() {
				t.Fatalf("first event after the start: %+v; want the end reported ahead", ev)
			}
			if tc.confirm {
				// The child holds until it is told.
				select {
				case ev := <-pr.Events():
					t.Fatalf("the child went on before Reported: %+v", ev)
				case <-pr.Done():
					t.Fatal("the child exited before Reported")
				case <-time.After(500 * time.Millisecond):
				}
				if err := pr.Reported(); err != nil {
					t.Fatal(err)
				}
				if err := pr.Reported(); err != nil { // a second call does nothing
					t.Fatal(err)
				}
			}
			ev = nextEvent(t, pr)
			want := fmt.Sprintf("confirmed=%t", tc.confirm)
			if ev.Kind != EventStatus || !strings.HasPrefix(ev.Status.GetError(), want) {
				t.Fatalf("event %+v; want a status saying %s", ev, want)
			}
			e := wait(t, pr, 60*time.Second)
			if e.Kind != EndFailed || e.Error != "early end" || e.Cause != "terminated" || e.ExitCode != 0 {
				t.Errorf("end %+v; want the end reported ahead, and the process to exit 0", e)
			}
		})
	}
}

func nextEvent(t *testing.T, pr *Proc) Event {
	t.Helper()
	select {
	case ev, ok := <-pr.Events():
		if !ok {
			t.Fatal("events closed")
		}
		return ev
	case <-time.After(60 * time.Second):
		t.Fatal("no event within 60s")
		return Event{}
	}
}
