//go:build linux

package jobproc

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/procmem"
)

// BenchmarkWarmStart measures Start on a warm process until the child runs
// the job (the parent receives EventStarted), and reports its p50 and p99.
func BenchmarkWarmStart(b *testing.B) {
	o := testOptions(nil)
	o.Idle = 1
	p := newPool(b, o)
	var lat []time.Duration
	b.StopTimer()
	for range b.N {
		waitFor(b, 60*time.Second, "a warm process", func() bool { return p.Stats().Ready >= 1 })
		b.StartTimer()
		began := time.Now()
		pr, err := p.Start(context.Background(), spec("ok"), nil)
		if err != nil {
			b.Fatal(err)
		}
		ev := <-pr.Events()
		lat = append(lat, ev.At.Sub(began))
		b.StopTimer()
		if ev.Kind != EventStarted || !pr.Warm() {
			b.Fatalf("event %v, warm %v", ev.Kind, pr.Warm())
		}
		pr.Wait()
	}
	slices.Sort(lat)
	q := func(f float64) float64 {
		return float64(lat[min(int(f*float64(len(lat))), len(lat)-1)]) / float64(time.Millisecond)
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkIdleRSS reports the resident set of an idle warm process, and
// the anonymous memory within it (the part no other process shares; the
// rest is mostly pages of the executable, shared by all the processes of
// one binary): of the test binary (which links the tests and, under -race,
// the race runtime), of the smallest program that serves jobs, and of one
// that also links the LiveKit server SDK as an agent does.
func BenchmarkIdleRSS(b *testing.B) {
	dir := b.TempDir()
	bins := map[string]string{"test-binary": ""}
	for _, name := range []string{"minimal", "withsdk"} {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, "./testdata/"+name)
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.Logf("cannot build %s, skipped: %v\n%s", name, err, msg)
			continue
		}
		bins[name] = out
	}
	for _, name := range []string{"test-binary", "minimal", "withsdk"} {
		path, ok := bins[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			var sum, anon int64
			for range b.N {
				o := testOptions(nil)
				o.Idle = 1
				o.Path = path
				if path != "" {
					o.Args = []string{}
				}
				p := newPool(b, o)
				waitFor(b, 60*time.Second, "a warm process", func() bool { return p.Stats().Ready == 1 })
				time.Sleep(500 * time.Millisecond) // let it settle
				sum += readyRSS(p)
				anon += readyAnon(p)
				closePool(b, p)
			}
			b.ReportMetric(float64(sum)/float64(b.N)/(1<<20), "idle-RSS-MiB")
			b.ReportMetric(float64(anon)/float64(b.N)/(1<<20), "idle-anon-MiB")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// readyAnon is the anonymous resident memory of a warm process of p, in
// bytes, or 0 where /proc does not tell.
func readyAnon(p *Pool) int64 {
	p.mu.Lock()
	pid := 0
	if len(p.ready) > 0 {
		pid = p.ready[0].pid
	}
	p.mu.Unlock()
	m, err := procmem.Read(pid)
	if err != nil {
		return 0
	}
	return m.Anon
}
