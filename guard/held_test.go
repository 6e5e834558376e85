package guard_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/guard"
	"github.com/lkagent/lkagent/internal/testkit/wait"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// The unserved gauge rises for canary while a canary dispatch has no
// worker, and falls once the guard served it to a canary worker started
// later (one of another SDK, as far as the guard knows: its own held
// sweep is off). The dispatch runs once.
func TestHeldGaugeAndServe(t *testing.T) {
	if testing.Short() {
		t.Skip("real server")
	}
	s := server(t)
	agent := uniq("scale")
	room := uniq("room")
	reg := prometheus.NewRegistry()
	h, err := guard.NewHeld(guard.HeldOptions{
		URL: s.srv.URL(), APIKey: s.srv.APIKey(), APISecret: s.srv.APISecret(),
		AgentNames: []string{agent}, After: 10 * time.Second, // not less: see internal/held
		Logger: slog.New(slog.DiscardHandler), Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	gauge := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "lkagent_dispatches_unserved" {
				for _, m := range mf.Metric {
					if m.GetLabel()[0].GetValue() == agent && m.GetLabel()[1].GetValue() == "canary" {
						return m.GetGauge().GetValue()
					}
				}
			}
		}
		return -1
	}
	sweep := func() {
		t.Helper()
		if _, err := h.Sweep(t.Context()); err != nil {
			t.Fatal(err)
		}
	}

	s.createDispatch(t, &livekit.CreateAgentDispatchRequest{AgentName: agent, Room: room, Deployment: "canary", Metadata: "m"})
	wait.Until(t, 30*time.Second, "unserved gauge at 1 for canary", func() bool { sweep(); return gauge() == 1 })

	var mu sync.Mutex
	runs := 0
	w, err := worker.New(worker.Options{
		URL: s.srv.URL(), APIKey: s.srv.APIKey(), APISecret: s.srv.APISecret(),
		AgentName: agent, Deployment: "canary", DrainTimeout: time.Second,
		Held:   worker.HeldOptions{Disabled: true},
		Logger: slog.New(slog.DiscardHandler),
	}, func(ctx context.Context, j *job.Job) error {
		if j.RoomName() == room && j.Info().GetMetadata() == "m" {
			mu.Lock()
			runs++
			mu.Unlock()
		}
		<-ctx.Done()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.StopAndCancel(context.Background()) })
	if gauge() != 1 {
		t.Fatalf("gauge = %v before the guard served the dispatch", gauge())
	}
	wait.Until(t, 60*time.Second, "unserved gauge back at 0", func() bool { sweep(); return gauge() == 0 })
	mu.Lock()
	defer mu.Unlock()
	if runs != 1 {
		t.Fatalf("the dispatch ran %d times, want 1", runs)
	}
	n := 0
	for _, d := range s.dispatches(t, room) {
		if d.AgentName == agent {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("room has %d dispatches of the agent, want 1", n)
	}
}
