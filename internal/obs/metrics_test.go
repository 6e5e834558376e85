package obs_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lkagent/lkagent/internal/obs"
)

// Staging and production workers of one agent share a registry: their
// series differ by the deployment label.
func TestDeploymentsShareARegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	staging := obs.New("support-bot", "staging")
	if err := staging.Register(reg); err != nil {
		t.Fatal(err)
	}
	prod := obs.New("support-bot", "")
	if err := prod.Register(reg); err != nil {
		t.Fatalf("a second deployment in the same registry: %v", err)
	}
	staging.OffersDeclined.WithLabelValues("foreign_deployment").Inc()
	prod.JobsFinished.WithLabelValues("failed").Add(2)

	want := `
# HELP lkagent_jobs_finished_total Jobs ended, by status: success, failed, terminated, panicked; in job processes also crashed, memory_limit, killed, start_failed; queued jobs that never started: queue_timeout, drain_timeout.
# TYPE lkagent_jobs_finished_total counter
lkagent_jobs_finished_total{agent_name="support-bot",deployment="_production",status="failed"} 2
# HELP lkagent_offers_declined_total Job offers declined, by reason.
# TYPE lkagent_offers_declined_total counter
lkagent_offers_declined_total{agent_name="support-bot",deployment="staging",reason="foreign_deployment"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "lkagent_jobs_finished_total", "lkagent_offers_declined_total"); err != nil {
		t.Fatal(err)
	}
	if err := obs.New("support-bot", "staging").Register(reg); err == nil {
		t.Fatal("registering the same agent and deployment twice succeeded")
	}
}

func TestNamesFollowConventions(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := obs.New("a", "b")
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	m.JobDuration.Observe(1)
	m.Disconnects.WithLabelValues("go_away").Inc()
	m.OffersDeclined.WithLabelValues("full").Inc()
	m.JobsFinished.WithLabelValues("success").Inc()
	m.StatusesDropped.Inc()
	m.JobsMigrated.Inc()
	m.QueueWait.Observe(1)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if want := len(m.Collectors()); len(fams) != want {
		t.Errorf("%d metric families, want %d", len(fams), want)
	}
	for _, f := range fams {
		name := f.GetName()
		if !strings.HasPrefix(name, "lkagent_") {
			t.Errorf("%s lacks the namespace", name)
		}
		switch f.GetType().String() {
		case "COUNTER":
			if !strings.HasSuffix(name, "_total") {
				t.Errorf("counter %s does not end in _total", name)
			}
		case "HISTOGRAM":
			if !strings.HasSuffix(name, "_seconds") {
				t.Errorf("histogram %s is not in seconds", name)
			}
		}
		for _, m := range f.GetMetric() {
			labels := map[string]bool{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = true
			}
			if !labels["agent_name"] || !labels["deployment"] {
				t.Errorf("%s lacks agent_name or deployment", name)
			}
		}
	}
}

func ExampleNew() {
	reg := prometheus.NewRegistry()
	m := obs.New("support-bot", "staging")
	if err := m.Register(reg); err != nil {
		panic(err)
	}
	m.OffersReceived.Inc()
	fmt.Println(testutil.ToFloat64(m.OffersReceived))
	// Output: 1
}
