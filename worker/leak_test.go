package worker_test

import (
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lkagent/lkagent/worker/workertest"
)

// TestNoGoroutineLeak runs a worker through jobs, a lost connection and a
// drain, and checks that once Run returned and the server closed, the
// goroutine count is back where it started. It does not run in parallel:
// other tests' goroutines would blur the count.
func TestNoGoroutineLeak(t *testing.T) {
	settle := func(limit int) (int, bool) {
		deadline := time.Now().Add(patience)
		for {
			n := runtime.NumGoroutine()
			if n <= limit || time.Now().After(deadline) {
				return n, n <= limit
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	baseline := runtime.NumGoroutine()

	srv := workertest.NewServer(nil)
	o := testOptions(srv, "leak-bot", "staging")
	o.AssignmentTimeout = 200 * time.Millisecond
	g := newGated()
	r := startWorker(t, o, g.handle)
	c1 := mustConn(t, srv)
	a := workertest.NewJob("leak-bot", "staging")
	dispatch(t, c1, a)
	g.waitStarted(t, a.GetId())
	if _, err := c1.Offer(waitCtx(t), workertest.NewJob("leak-bot", "staging")); err != nil { // never assigned
		t.Fatal(err)
	}
	c1.Drop()
	c2 := mustConn(t, srv)
	b := workertest.NewJob("leak-bot", "staging")
	dispatch(t, c2, b)
	g.waitStarted(t, b.GetId())
	g.open(a.GetId())
	eventually(t, "job a to end", func() bool { return !slices.Contains(runningJobs(r.w), a.GetId()) })
	go func() {
		time.Sleep(200 * time.Millisecond)
		g.open(b.GetId())
	}()
	if err := r.stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	srv.Close()

	if n, ok := settle(baseline); !ok {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var ours []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "lkagent/lkagent/worker") || strings.Contains(g, "gorilla/websocket") {
				ours = append(ours, g)
			}
		}
		t.Fatalf("%d goroutines after Run returned, %d before; still running:\n%s", n, baseline, strings.Join(ours, "\n\n"))
	}
}
