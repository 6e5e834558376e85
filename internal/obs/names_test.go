package obs_test

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/internal/obs"
	"github.com/lkagent/lkagent/metrics"
)

// The names package metrics documents are exactly the worker's collectors,
// with the labels it documents.
func TestNamesDocumentedInPackageMetrics(t *testing.T) {
	t.Parallel()
	documented := []string{
		metrics.Connected, metrics.Registrations, metrics.ReconnectAttempts, metrics.Disconnects,
		metrics.OffersReceived, metrics.OffersAccepted, metrics.OffersDeclined, metrics.AssignmentTimeouts,
		metrics.UnexpectedAssignments, metrics.JobsRunning, metrics.JobsFinished, metrics.JobDuration,
		metrics.JobLaunchLatency, metrics.OfferDecisionLatency, metrics.Load, metrics.Draining,
		metrics.JobStatusesDropped, metrics.JobsMigrated, metrics.Capacity, metrics.QueueCapacity,
		metrics.JobsQueued, metrics.QueueWait, metrics.JobMemoryWarnings, metrics.JobsIgnoringTermination,
	}
	reg := prometheus.NewRegistry()
	m := obs.New("bot", "")
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	// Vectors have no series, so no family, until a label value is used.
	m.Disconnects.WithLabelValues("go_away").Inc()
	m.OffersDeclined.WithLabelValues("full").Inc()
	m.JobsFinished.WithLabelValues("success").Inc()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range fams {
		got = append(got, f.GetName())
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels[metrics.LabelAgentName] != "bot" || labels[metrics.LabelDeployment] != metrics.ProductionDeployment {
				t.Errorf("%s: labels %v, want %s=bot and %s=%s", f.GetName(), labels,
					metrics.LabelAgentName, metrics.LabelDeployment, metrics.ProductionDeployment)
			}
		}
	}
	slices.Sort(got)
	slices.Sort(documented)
	if !slices.Equal(got, documented) {
		t.Errorf("collectors %v,\npackage metrics documents %v", got, documented)
	}
	if len(m.Collectors()) != len(documented) {
		t.Errorf("%d collectors, %d documented names", len(m.Collectors()), len(documented))
	}
}
