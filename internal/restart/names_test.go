package restart

import (
	"log/slog"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/metrics"
)

// The names package metrics documents for restarts and held dispatches are
// the collectors' names.
func TestNamesDocumentedInPackageMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	c, err := newCollectors(reg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := newHeld(HeldOptions{Registerer: reg, Logger: slog.New(slog.DiscardHandler)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.restarts.WithLabelValues("bot", "").Inc()
	c.refusals.WithLabelValues("bot", "", string(CapReached)).Inc()
	c.errors.WithLabelValues("bot", "").Inc()
	c.webhooks.WithLabelValues(webhookAccepted).Inc()
	h.unserved.WithLabelValues("bot", "").Set(1)
	h.recovered.WithLabelValues("bot", "").Inc()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range fams {
		got = append(got, f.GetName())
	}
	want := []string{metrics.Restarts, metrics.RestartRefusals, metrics.RestartErrors, metrics.GuardWebhooks,
		metrics.DispatchesUnserved, metrics.DispatchesRecovered}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("collectors %v,\npackage metrics documents %v", got, want)
	}
}
