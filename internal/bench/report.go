package bench

import (
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"
)

// WriteTable prints r for people.
func (r *Report) WriteTable(out io.Writer) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	p := func(format string, a ...any) { fmt.Fprintf(tw, format, a...) }
	lat := func(name string, l Latency) {
		if l.N == 0 {
			return
		}
		p("  %s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\n", name, l.N, l.P50, l.P95, l.P99, l.Max)
	}
	p("agent %q, deployments %s, %d worker(s) each, %s, rooms joined: %v\n\n",
		r.AgentName, quoteAll(r.Deployments), r.WorkersPerDeployment, r.JobType, r.JoinRooms)
	p("latency (ms)\tn\tp50\tp95\tp99\tmax\n")
	lat("registration (dial → registered)", r.Registration)
	for _, ph := range []struct {
		name string
		ph   Phase
	}{{"sequential", r.Sequential}, {"concurrent ×" + strconv.Itoa(r.Concurrent.Concurrency), r.Concurrent}} {
		p("%s\t\t\t\t\t\n", ph.name)
		lat("dispatch → offer (server)", ph.ph.DispatchToOffer)
		lat("offer → handler (worker)", ph.ph.OfferToHandler)
		lat("dispatch → handler", ph.ph.DispatchToHandler)
		lat("dispatch → agent visible", ph.ph.DispatchToVisible)
		p("  jobs/s accepted, completed\t%.1f, %.1f\t\t\t\t\n", ph.ph.AcceptedPerSecond, ph.ph.CompletedPerSecond)
		if ph.ph.Errors > 0 {
			p("  errors\t%d\t\t\t\t\n", ph.ph.Errors)
		}
	}
	m := r.Memory
	p("\nmemory\t\t\t\t\t\n")
	p("  RSS idle\t%s\t\t\t\t\n", mib(m.IdleRSSBytes))
	p("  RSS with %d running jobs (no room)\t%s\t(%s per job)\t\t\t\n", m.Jobs, mib(m.RSSWithJobsBytes), kib(m.PerJobBytes))
	p("  heap per running job\t%s\t\t\t\t\n", kib(m.HeapPerRunningJobB))
	if m.RSSWithJoinedBytes > 0 {
		p("  RSS with %d jobs in rooms\t%s\t(%s per job)\t\t\t\n", m.Jobs, mib(m.RSSWithJoinedBytes), kib(m.PerJoinedJobBytes))
	}
	p("\nrouting\t%d jobs checked, %d violations, %d lost\t\t\t\t\n", r.RoutingChecked, r.RoutingViolations, r.Lost)
	p("took\t%s\t\t\t\t\n", r.Duration.Round(time.Millisecond))
	return tw.Flush()
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
func kib(b int64) string  { return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10)) }
