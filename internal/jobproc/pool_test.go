//go:build linux

package jobproc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Warm processes are ready before any job, take a job quickly, and are
// replaced after use.
func TestWarmPool(t *testing.T) {
	o := testOptions(nil)
	o.Idle = 2
	p := newPool(t, o)
	waitFor(t, 60*time.Second, "2 warm processes", func() bool { return p.Stats().Ready == 2 })
	began := time.Now()
	pr := start(t, p, "sleep:1h", nil)
	waitStarted(t, pr)
	took := time.Since(began)
	if !pr.Warm() {
		t.Error("the job did not get a warm process")
	}
	if took > 5*time.Second {
		t.Errorf("a warm start took %s", took)
	}
	t.Logf("warm start → job running: %s", took)
	if rss := pr.RSS(); rss <= 0 {
		t.Errorf("RSS %d", rss)
	}
	waitFor(t, 60*time.Second, "the pool to refill", func() bool {
		s := p.Stats()
		return s.Ready == 2 && s.Running == 1
	})
	_ = pr.Cancel(Cause{Code: "done"})
	if e := wait(t, pr, 60*time.Second); e.Kind != EndSucceeded {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
	if pr.RSS() != 0 {
		t.Error("RSS of an ended process is not 0")
	}
	if s := p.Stats(); s.Running != 0 || s.Ready != 2 {
		t.Errorf("stats after the job %+v", s)
	}
}

// Without warm processes, Start starts one for the job.
func TestColdStart(t *testing.T) {
	p := newPool(t, testOptions(nil))
	pr := start(t, p, "ok", nil)
	if pr.Warm() {
		t.Error("a cold start says it was warm")
	}
	if e := wait(t, pr, 60*time.Second); e.Kind != EndSucceeded {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
	if s := p.Stats(); s.Ready != 0 || s.Starting != 0 || s.Running != 0 {
		t.Errorf("stats %+v", s)
	}
	// Many at once.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			pr, err := p.Start(context.Background(), spec("ok"), nil)
			if err != nil {
				t.Error(err)
				return
			}
			if e := pr.Wait(); e.Kind != EndSucceeded {
				t.Errorf("end %v %q", e.Kind, e.Error)
			}
		})
	}
	wg.Wait()
}

// healthWatch records OnHealth calls.
type healthWatch struct {
	mu   sync.Mutex
	errs []error
}

func (h *healthWatch) on(err error) {
	h.mu.Lock()
	h.errs = append(h.errs, err)
	h.mu.Unlock()
}

func (h *healthWatch) calls() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]error(nil), h.errs...)
}

// A binary that cannot serve makes the pool unhealthy, with the reason.
func TestUnhealthyBinary(t *testing.T) {
	var hw healthWatch
	o := testOptions(nil)
	o.Path = "/bin/false"
	o.OnHealth = hw.on
	p := newPool(t, o)
	// With no warm process asked for, a Start is what tries.
	_, err := p.Start(context.Background(), spec("ok"), nil)
	var ee *EndError
	if !errors.As(err, &ee) || ee.End.Kind != EndStartFailed || ee.End.ExitCode != 1 ||
		!strings.Contains(err.Error(), "exited with code 1 before it was ready") {
		t.Fatalf("Start: %v", err)
	}
	var herr error
	waitFor(t, 60*time.Second, "the pool to be unhealthy", func() bool { herr = p.Healthy(); return herr != nil })
	if !errors.Is(herr, ErrUnhealthy) || !strings.Contains(herr.Error(), "starts in a row failed; the last: it exited with code 1 before it was ready") {
		t.Errorf("Healthy: %v", herr)
	}
	t.Logf("Healthy: %v", herr)
	if c := hw.calls(); len(c) != 1 || c[0] == nil {
		t.Errorf("OnHealth calls %v", c)
	}
	// A missing binary is a start failure too.
	o.Path = filepath.Join(t.TempDir(), "missing")
	o.OnHealth = nil
	p2 := newPool(t, o)
	if _, err := p2.Start(context.Background(), spec("ok"), nil); !errors.As(err, &ee) || ee.End.Kind != EndStartFailed {
		t.Errorf("Start with a missing binary: %v", err)
	}
}

// A pool whose processes crash before they are ready becomes unhealthy,
// and healthy again once they start.
func TestHealthRecovers(t *testing.T) {
	fail := filepath.Join(t.TempDir(), "fail")
	if err := os.WriteFile(fail, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var hw healthWatch
	o := testOptions(nil)
	o.Idle = 1
	o.Env = []string{envFailFile + "=" + fail}
	o.OnHealth = hw.on
	p := newPool(t, o)
	var herr error
	waitFor(t, 60*time.Second, "the pool to be unhealthy", func() bool { herr = p.Healthy(); return herr != nil })
	if !strings.Contains(herr.Error(), "test child: told to fail before serving") {
		t.Errorf("the reason does not carry the child's stderr: %v", herr)
	}
	if err := os.Remove(fail); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the pool to be healthy", func() bool { return p.Healthy() == nil })
	waitFor(t, 60*time.Second, "a warm process", func() bool { return p.Stats().Ready == 1 })
	if e := wait(t, start(t, p, "ok", nil), 60*time.Second); e.Kind != EndSucceeded {
		t.Errorf("end %v %q", e.Kind, e.Error)
	}
	c := hw.calls()
	if len(c) != 2 || c[0] == nil || c[1] != nil {
		t.Errorf("OnHealth calls %v", c)
	}
}

// With no warm process asked for, an unhealthy pool still probes, and
// recovers without a job.
func TestHealthRecoversWithoutIdle(t *testing.T) {
	fail := filepath.Join(t.TempDir(), "fail")
	if err := os.WriteFile(fail, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	o := testOptions(nil)
	o.Env = []string{envFailFile + "=" + fail}
	p := newPool(t, o)
	for range DefaultCrashLoop {
		_, _ = p.Start(context.Background(), spec("ok"), nil)
	}
	if p.Healthy() == nil {
		t.Fatal("still healthy")
	}
	_ = os.Remove(fail)
	waitFor(t, 60*time.Second, "the pool to be healthy", func() bool { return p.Healthy() == nil })
}

// A process that does not report ready in time is killed, and the pool
// says its starts time out.
func TestStartTimeout(t *testing.T) {
	o := testOptions(nil)
	o.StartTimeout = 300 * time.Millisecond
	o.Env = []string{envStartDelay + "=1h"}
	p := newPool(t, o)
	_, err := p.Start(context.Background(), spec("ok"), nil)
	var ee *EndError
	if !errors.As(err, &ee) || ee.End.Kind != EndStartFailed || !strings.Contains(err.Error(), "did not report ready within 300ms") {
		t.Fatalf("Start: %v", err)
	}
	if herr := p.Healthy(); herr == nil || !strings.Contains(herr.Error(), "the last start timed out") {
		t.Errorf("Healthy: %v", herr)
	}
}

// Start gives up when its context is done.
func TestStartContext(t *testing.T) {
	o := testOptions(nil)
	o.Env = []string{envStartDelay + "=1h"}
	p := newPool(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := p.Start(ctx, spec("ok"), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start: %v", err)
	}
	if s := p.Stats(); s.Waiting != 0 {
		t.Errorf("stats %+v", s)
	}
}

// Close kills warm processes at once, waits for running ones until its
// context is done, then kills them; nothing is left behind.
func TestClose(t *testing.T) {
	o := testOptions(nil)
	o.Idle = 2
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "2 warm processes", func() bool { return p.Stats().Ready == 2 })
	hang := start(t, p, "hang", nil)
	slow := start(t, p, "sleep:500ms", nil)
	waitFor(t, 60*time.Second, "the pool to refill", func() bool { return p.Stats().Ready == 2 })
	pids := p.pidsSeen()
	if len(pids) != 4 {
		t.Fatalf("pids %v", pids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err = p.Close(ctx)
	if err == nil || !strings.Contains(err.Error(), "killed 1 job processes") {
		t.Errorf("Close: %v", err)
	}
	if e := slow.Wait(); e.Kind != EndSucceeded {
		t.Errorf("the slow job: %v %q", e.Kind, e.Error)
	}
	if e := hang.Wait(); e.Kind != EndKilled || e.Error != "pool closed" {
		t.Errorf("the hanging job: %v %q", e.Kind, e.Error)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("job process %d left after Close", pid)
		}
	}
	checkNoGoroutines(t)
	if _, err := p.Start(context.Background(), spec("ok"), nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// ServeOptions.Prepare runs before the child reports ready; one that fails
// is a failed start, and the pool's health says why.
func TestPrepare(t *testing.T) {
	o := testOptions(nil)
	o.Env = []string{envPrepare + "=ok"}
	p := newPool(t, o)
	if e := wait(t, start(t, p, "prepared", nil), 60*time.Second); e.Kind != EndSucceeded {
		t.Fatalf("end %v %q", e.Kind, e.Error)
	}

	o.Env = []string{envPrepare + "=fail"}
	p = newPool(t, o)
	_, err := p.Start(context.Background(), spec("prepared"), nil)
	var ee *EndError
	if !errors.As(err, &ee) || ee.End.Kind != EndStartFailed || !strings.Contains(ee.End.Stderr, "prepare failed on purpose") {
		t.Fatalf("Start: %v, want a failed start whose stderr says why", err)
	}
	var herr error
	waitFor(t, 60*time.Second, "the pool to be unhealthy", func() bool { herr = p.Healthy(); return herr != nil })
	if !strings.Contains(herr.Error(), "prepare failed on purpose") {
		t.Errorf("Healthy: %v, want the hook's error", herr)
	}
}
