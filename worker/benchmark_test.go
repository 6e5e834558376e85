package worker_test

import (
	"context"
	"log/slog"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// benchRig is a worker registered with a peer, with per-job instants the
// benchmarks read. Jobs are named "AJ_<i>" so handlers find their slot.
type benchRig struct {
	w    *worker.Worker
	conn *peerConn
	stop func()

	assignAt  []atomic.Int64 // unix nanos the assignment was sent
	startAt   []atomic.Int64 // unix nanos the handler started
	started   atomic.Int64
	startCh   chan int      // indexes of started handlers, for benchmarks that wait on them
	release   chan struct{} // held handlers return when it is closed
	holdBelow int           // handlers of jobs with a lower index hold
}

func jobN(i int) *livekit.Job {
	s := strconv.Itoa(i)
	return &livekit.Job{Id: "AJ_" + s, AgentName: "bench", Type: livekit.JobType_JT_ROOM, Room: &livekit.Room{Name: "room-" + s}}
}

func jobIndex(id string) int {
	i, _ := strconv.Atoi(id[3:])
	return i
}

// newRig starts a worker for up to n jobs against a fresh peer; the
// handlers of the first holdBelow jobs wait until the rig stops.
func newRig(tb testing.TB, n, holdBelow int, onRequest worker.RequestFunc) *benchRig {
	r := &benchRig{assignAt: make([]atomic.Int64, n), startAt: make([]atomic.Int64, n), release: make(chan struct{}),
		holdBelow: holdBelow, startCh: make(chan int, 1)}
	p := newPeer(tb)
	w, err := worker.New(worker.Options{
		URL: p.url(), APIKey: "k", APISecret: "s", AgentName: "bench",
		Logger: slog.New(slog.DiscardHandler), OnRequest: onRequest,
		DrainTimeout: time.Second, ShutdownTimeout: 5 * time.Second,
	}, func(ctx context.Context, j *job.Job) error {
		i := jobIndex(j.ID())
		r.startAt[i].Store(time.Now().UnixNano())
		select {
		case r.startCh <- i:
		default:
		}
		r.started.Add(1)
		if i < r.holdBelow {
			select {
			case <-r.release:
			case <-ctx.Done():
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	r.w, r.conn = w, p.wait(tb)
	r.stop = func() {
		close(r.release)
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	}
	return r
}

// accept offers job i and waits for the answer.
func (r *benchRig) accept(tb testing.TB, i int, answers chan *livekit.AvailabilityResponse) {
	if err := r.conn.offer(jobN(i)); err != nil {
		tb.Fatal(err)
	}
	select {
	case a := <-answers:
		if !a.GetAvailable() {
			tb.Fatalf("offer %d declined", i)
		}
	case <-time.After(10 * time.Second):
		tb.Fatalf("no answer to offer %d", i)
	}
}

func (r *benchRig) assign(tb testing.TB, i int) {
	r.assignAt[i].Store(time.Now().UnixNano())
	if err := r.conn.assign(jobN(i)); err != nil {
		tb.Fatal(err)
	}
}

func (r *benchRig) launchLatencies(n int) []time.Duration {
	d := make([]time.Duration, 0, n)
	for i := range n {
		if s, a := r.startAt[i].Load(), r.assignAt[i].Load(); s != 0 && a != 0 {
			d = append(d, time.Duration(s-a))
		}
	}
	return d
}

func waitUntil(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Offer → availability answer, round trip through the worker.
func BenchmarkOfferAnswer(b *testing.B) {
	for _, tc := range []struct {
		name      string
		onRequest worker.RequestFunc
	}{
		{"default", nil},
		{"OnRequest", func(ctx context.Context, r *job.Request) error {
			return r.Accept(job.AcceptOptions{Identity: "bot-" + r.RoomName(), Attributes: map[string]string{"tier": "gold"}})
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := newRig(b, 1, 0, tc.onRequest)
			defer r.stop()
			answers := make(chan *livekit.AvailabilityResponse, 1)
			r.conn.handle(func(a *livekit.AvailabilityResponse, _ time.Time) { answers <- a }, nil)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				j := jobN(i)
				i++
				if err := r.conn.offer(j); err != nil {
					b.Fatal(err)
				}
				if a := <-answers; !a.GetAvailable() {
					b.Fatal("declined")
				}
				// Free the slot, as the server's termination of an
				// unassigned job does.
				_ = r.conn.send(&livekit.ServerMessage{Message: &livekit.ServerMessage_Termination{Termination: &livekit.JobTermination{JobId: j.Id}}})
			}
		})
	}
}

// Assignment → handler start, one job at a time; reports p50/p99 in µs.
func BenchmarkAssignmentToHandlerStart(b *testing.B) {
	const max = 1 << 20
	r := newRig(b, max, 0, nil)
	defer r.stop()
	answers := make(chan *livekit.AvailabilityResponse, 1)
	r.conn.handle(func(a *livekit.AvailabilityResponse, _ time.Time) { answers <- a }, nil)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if n == max {
			b.Fatal("too many iterations")
		}
		b.StopTimer()
		r.accept(b, n, answers)
		b.StartTimer()
		r.assign(b, n)
		if got := <-r.startCh; got != n {
			b.Fatalf("job %d started, want %d", got, n)
		}
		n++
	}
	p50, p99 := percentiles(r.launchLatencies(n))
	b.ReportMetric(p50, "p50-µs")
	b.ReportMetric(p99, "p99-µs")
}

// A full job: offer, accept, assign, an empty handler, final status.
func BenchmarkJobCycle(b *testing.B) {
	const max = 1 << 20
	r := newRig(b, max, 0, nil)
	defer r.stop()
	answers := make(chan *livekit.AvailabilityResponse, 1)
	final := make(chan string, 1)
	r.conn.handle(func(a *livekit.AvailabilityResponse, _ time.Time) { answers <- a },
		func(u *livekit.UpdateJobStatus, _ time.Time) {
			if u.GetStatus() == livekit.JobStatus_JS_SUCCESS {
				final <- u.GetJobId()
			}
		})
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		r.accept(b, n, answers)
		r.assign(b, n)
		if id := <-final; id != jobN(n).Id {
			b.Fatalf("final status for %s, want %s", id, jobN(n).Id)
		}
		n++
	}
}

// Job cycles while 1,000 jobs run: the status traffic of a busy worker.
func BenchmarkJobCycleUnder1000Running(b *testing.B) {
	const held, max = 1000, 1 << 20
	r := newRig(b, max, held, nil)
	defer r.stop()
	var answered, finished atomic.Int64
	r.conn.handle(func(*livekit.AvailabilityResponse, time.Time) { answered.Add(1) },
		func(u *livekit.UpdateJobStatus, _ time.Time) {
			if u.GetStatus() == livekit.JobStatus_JS_SUCCESS {
				finished.Add(1)
			}
		})
	for i := range held {
		_ = r.conn.offer(jobN(i))
	}
	waitUntil(b, 30*time.Second, "answers to the held offers", func() bool { return answered.Load() == held })
	for i := range held {
		r.assign(b, i)
	}
	waitUntil(b, 30*time.Second, "the held jobs to start", func() bool { return r.started.Load() == held })
	answers := make(chan *livekit.AvailabilityResponse, 1)
	r.conn.handle(func(a *livekit.AvailabilityResponse, _ time.Time) { answers <- a },
		func(u *livekit.UpdateJobStatus, _ time.Time) {
			if u.GetStatus() == livekit.JobStatus_JS_SUCCESS {
				finished.Add(1)
			}
		})
	b.ReportAllocs()
	b.ResetTimer()
	next := held
	for b.Loop() {
		if next >= max {
			b.Fatal("too many iterations")
		}
		r.accept(b, next, answers)
		r.assign(b, next)
		next++
	}
	done := int64(next - held)
	waitUntil(b, 60*time.Second, "the cycled jobs to finish", func() bool { return finished.Load() >= done })
	b.ReportMetric(float64(len(r.w.Snapshot().Jobs)), "running")
}

// memInUse is heap plus goroutine stacks, after a GC.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}

// 10,000 jobs running at once in one worker: memory per running job and
// assignment → handler start latency at that load.
func BenchmarkHold10kJobs(b *testing.B) {
	for b.Loop() {
		hold(b, 10000)
	}
}

func hold(tb testing.TB, n int) (perJob float64, p50, p99 float64, goroutines int) {
	const extra = 500
	r := newRig(tb, n+extra, n, nil)
	var answered atomic.Int64
	r.conn.handle(func(*livekit.AvailabilityResponse, time.Time) { answered.Add(1) }, nil)
	baseG := runtime.NumGoroutine()
	base := memInUse()
	for i := range n {
		if err := r.conn.offer(jobN(i)); err != nil {
			tb.Fatal(err)
		}
	}
	waitUntil(tb, 60*time.Second, "answers", func() bool { return answered.Load() == int64(n) })
	for i := range n {
		r.assign(tb, i)
	}
	waitUntil(tb, 60*time.Second, "all handlers to start", func() bool { return r.started.Load() == int64(n) })
	used := memInUse()
	goroutines = runtime.NumGoroutine() - baseG
	perJob = float64(int64(used)-int64(base)) / float64(n)
	// At that load: assignment → handler start, one job at a time.
	for len(r.startCh) > 0 {
		<-r.startCh
	}
	answers := make(chan *livekit.AvailabilityResponse, 1)
	r.conn.handle(func(a *livekit.AvailabilityResponse, _ time.Time) { answers <- a }, nil)
	var lat []time.Duration
	for i := n; i < n+extra; i++ {
		r.accept(tb, i, answers)
		r.assign(tb, i)
		if got := <-r.startCh; got != i {
			tb.Fatalf("job %d started, want %d", got, i)
		}
		lat = append(lat, time.Duration(r.startAt[i].Load()-r.assignAt[i].Load()))
	}
	p50, p99 = percentiles(lat)
	if b, ok := tb.(*testing.B); ok {
		b.ReportMetric(perJob, "B/running-job")
		b.ReportMetric(p50, "launch-p50-µs")
		b.ReportMetric(p99, "launch-p99-µs")
		b.ReportMetric(float64(goroutines)/float64(n), "goroutines/job")
	}
	r.stop()
	return perJob, p50, p99, goroutines
}

// Offers paced at 1,000 per second: offer → answer latency at the peer.
func BenchmarkOfferLatencyAt1000PerSecond(b *testing.B) {
	const n = 2000
	for b.Loop() {
		r := newRig(b, n, 0, nil)
		sent := make([]atomic.Int64, n)
		lat := make([]time.Duration, n)
		var got atomic.Int64
		r.conn.handle(func(a *livekit.AvailabilityResponse, at time.Time) {
			i := jobIndex(a.GetJobId())
			lat[i] = at.Sub(time.Unix(0, sent[i].Load()))
			got.Add(1)
		}, nil)
		t := time.NewTicker(time.Millisecond)
		for i := range n {
			<-t.C
			sent[i].Store(time.Now().UnixNano())
			if err := r.conn.offer(jobN(i)); err != nil {
				b.Fatal(err)
			}
		}
		t.Stop()
		waitUntil(b, 30*time.Second, "all answers", func() bool { return got.Load() == n })
		p50, p99 := percentiles(lat)
		b.ReportMetric(p50, "p50-µs")
		b.ReportMetric(p99, "p99-µs")
		r.stop()
	}
}

// 10,000 jobs one after another leave no goroutine and no memory behind.
func BenchmarkSequentialJobsNoGrowth(b *testing.B) {
	for b.Loop() {
		g, heap := sequential(b, 10000)
		b.ReportMetric(float64(g), "goroutines-grown")
		b.ReportMetric(float64(heap), "heap-grown-B")
	}
}

// sequential runs n job cycles and returns the growth of goroutines and of
// memory in use between the first 100 and the last job. It fails tb when
// goroutines grew.
func sequential(tb testing.TB, n int) (goroutines int, heap int64) {
	r := newRig(tb, n, 0, nil)
	defer r.stop()
	answers := make(chan *livekit.AvailabilityResponse, 1)
	final := make(chan struct{}, 1)
	r.conn.handle(func(a *livekit.AvailabilityResponse, _ time.Time) { answers <- a },
		func(u *livekit.UpdateJobStatus, _ time.Time) {
			if u.GetStatus() == livekit.JobStatus_JS_SUCCESS {
				final <- struct{}{}
			}
		})
	var baseG int
	var base uint64
	for i := range n {
		if i == 100 {
			time.Sleep(100 * time.Millisecond)
			baseG, base = runtime.NumGoroutine(), memInUse()
		}
		r.accept(tb, i, answers)
		r.assign(tb, i)
		select {
		case <-final:
		case <-time.After(10 * time.Second):
			tb.Fatalf("job %d did not finish", i)
		}
	}
	time.Sleep(100 * time.Millisecond)
	goroutines, heap = runtime.NumGoroutine()-baseG, int64(memInUse())-int64(base)
	if goroutines > 2 {
		tb.Fatalf("goroutines grew by %d over %d sequential jobs", goroutines, n)
	}
	return goroutines, heap
}

// The properties the benchmarks measure at scale, with small numbers and
// generous bounds, so that every test run checks them.
func TestNoGrowthAndBoundedMemory(t *testing.T) {
	if _, heap := sequential(t, 1000); heap > 1<<20 {
		t.Errorf("memory in use grew by %d bytes over 900 sequential jobs", heap)
	}
	perJob, _, _, goroutines := hold(t, 500)
	if perJob > 64<<10 {
		t.Errorf("%.0f bytes per running job", perJob)
	}
	if goroutines > 500+50 {
		t.Errorf("%d goroutines for 500 running jobs: more than one per job", goroutines)
	}
}
