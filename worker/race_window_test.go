package worker_test

// The assignment race of LiveKit's server, measured against the real
// server: it writes an assignment and only then records the job, and drops
// a status that arrives in between. How often a job that ends at once
// loses its end, for StatusDelay values from 0 up.

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

var unknownJob = regexp.MustCompile(`received job update for unknown job.*"jobID": "(AJ_[A-Za-z0-9]+)"`)

// BenchmarkAssignmentRaceRealServer reports, for each StatusDelay, the
// share of jobs (of 100 that return at once, per iteration) whose updates
// the real server dropped as an unknown job's.
func BenchmarkAssignmentRaceRealServer(b *testing.B) {
	logs := &syncbuf.Buffer{}
	srv := lkserver.StartTB(b, lkserver.Options{LogLevel: "debug", Logs: logs})
	for _, delay := range []time.Duration{0, time.Millisecond, 10 * time.Millisecond, worker.StatusDelay} {
		b.Run(fmt.Sprintf("delay=%s", delay), func(b *testing.B) {
			const n = 100
			agent := fmt.Sprintf("race-%d", time.Now().UnixNano())
			var mu sync.Mutex
			ran := map[string]bool{}
			w, err := worker.New(worker.Options{URL: srv.URL(), APIKey: srv.APIKey(), APISecret: srv.APISecret(),
				AgentName: agent, Logger: slog.New(slog.DiscardHandler), KeepSDKLogger: true},
				func(ctx context.Context, j *job.Job) error {
					mu.Lock()
					ran[j.ID()] = true
					mu.Unlock()
					return nil
				})
			if err != nil {
				b.Fatal(err)
			}
			worker.SetStatusDelay(w, delay)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := w.Start(ctx); err != nil {
				b.Fatal(err)
			}
			defer w.Stop(ctx)
			time.Sleep(lkserver.RegistrationSettle)
			dc := lksdk.NewAgentDispatchServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret())
			total, lost := 0, 0
			for i := 0; b.Loop(); i++ {
				var wg sync.WaitGroup
				for k := range n {
					wg.Go(func() {
						_, _ = dc.CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{AgentName: agent,
							Room: fmt.Sprintf("%s-%d-%d", agent, i, k)})
					})
				}
				wg.Wait()
				want := total + n
				for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
					mu.Lock()
					got := len(ran)
					mu.Unlock()
					if got >= want || time.Now().After(deadline) {
						break
					}
				}
				time.Sleep(time.Second + delay) // the last statuses reach the server
				total = want
			}
			mu.Lock()
			lostIDs := map[string]bool{}
			for _, m := range unknownJob.FindAllStringSubmatch(logs.String(), -1) {
				if ran[m[1]] {
					lostIDs[m[1]] = true
				}
			}
			lost = len(lostIDs)
			mu.Unlock()
			b.ReportMetric(100*float64(lost)/float64(max(total, 1)), "%jobs-with-dropped-updates")
		})
	}
}
