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
	executor := "in process"
	if r.Processes {
		executor = "each in a process of its own"
		if r.Idle > 0 {
			executor += fmt.Sprintf(" (%d warm per worker)", r.Idle)
		}
	}
	p("agent %q, deployments %s, %d worker(s) each, %s, rooms joined: %v, jobs run %s\n\n",
		r.AgentName, quoteAll(r.Deployments), r.WorkersPerDeployment, r.JobType, r.JoinRooms, executor)
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
			for _, e := range ph.ph.ErrorTexts {
				p("    %s\t\t\t\t\t\n", e)
			}
		}
	}
	m := r.Memory
	if r.Processes {
		p("\nmemory of the worker's process\t\t\t\t\t\n")
	} else {
		p("\nmemory\t\t\t\t\t\n")
	}
	p("  RSS idle\t%s\t\t\t\t\n", mib(m.IdleRSSBytes))
	p("  RSS with %d running jobs (no room)\t%s\t(%s per job)\t\t\t\n", m.Jobs, mib(m.RSSWithJobsBytes), kib(m.PerJobBytes))
	p("  heap per running job\t%s\t\t\t\t\n", kib(m.HeapPerRunningJobB))
	if m.RSSWithJoinedBytes > 0 {
		p("  RSS with %d jobs in rooms\t%s\t(%s per job)\t\t\t\n", m.Jobs, mib(m.RSSWithJoinedBytes), kib(m.PerJoinedJobBytes))
	}
	if r.Processes {
		p("\nmemory of a job process (mean)\tRSS\tPSS\t\t\t\n")
		p("  warm, waiting for a job\t%s\t%s\t\t\t\n", mib(uint64(m.JobProcessIdleRSSBytes)), mib(uint64(m.JobProcessIdlePSSBytes)))
		p("  running a job (no room)\t%s\t%s\t\t\t\n", mib(uint64(m.JobProcessRSSBytes)), mib(uint64(m.JobProcessPSSBytes)))
		if m.JoinedJobProcessRSSBytes > 0 {
			p("  its job in a room\t%s\t%s\t\t\t\n", mib(uint64(m.JoinedJobProcessRSSBytes)), mib(uint64(m.JoinedJobProcessPSSBytes)))
		}
	}
	p("\nrouting\t%d jobs checked, %d violations, %d lost\t\t\t\t\n", r.RoutingChecked, r.RoutingViolations, r.Lost)
	p("took\t%s\t\t\t\t\n", r.Duration.Round(time.Millisecond))
	return tw.Flush()
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
func kib(b int64) string  { return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10)) }

// WriteTable prints r for people.
func (r *BurstReport) WriteTable(out io.Writer) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	p := func(format string, a ...any) { fmt.Fprintf(tw, format, a...) }
	queue := "no queue"
	if r.MaxQueued > 0 {
		queue = fmt.Sprintf("MaxQueued %d, QueueTimeout %s", r.MaxQueued, msDuration(r.QueueTimeoutMS))
	}
	maxJobs := "no cap"
	if r.MaxJobs > 0 {
		maxJobs = strconv.Itoa(r.MaxJobs)
	}
	p("burst of %d dispatches at once, agent %q, deployments %s, %d worker(s) each\n",
		r.Jobs, r.AgentName, quoteAll(r.Deployments), r.WorkersPerDeployment)
	p("workers: MaxJobs %s, %s; each job holds %s; rooms not joined\n", maxJobs, queue, msDuration(r.HoldMS))
	via := "CreateDispatch (a new room gets the default configuration: an automatic agent job too)"
	if r.Via == ViaClient {
		via = "dispatch.Client (a new room is created with its dispatch in its configuration)"
	}
	p("dispatched through %s\n\n", via)

	p("jobs\n")
	p("  dispatched\t%d of %d (%d failed)\n", r.Dispatched, r.Jobs, r.DispatchErrors)
	p("  ran\t%d\n", r.Ran)
	p("  lost (not started within %s of the last dispatch)\t%d (%d of them queue timeouts, %d started late)\n",
		msDuration(r.LostAfterMS), r.Lost, r.QueueTimeouts, r.LateStarts)
	p("  run twice\t%d\n", r.RunTwice)
	p("  ran on a worker of another deployment\t%d\n", r.RoutingViolations)
	p("  dispatching (first sent → last answered)\t%s\n", msDuration(r.DispatchingMS))
	p("  first dispatch → last job started\t%s\n", msDuration(r.FirstDispatchToLastStartMS))
	p("  wait ended\t%s\n", r.WaitEnded)
	if err := tw.Flush(); err != nil {
		return err
	}

	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	p = func(format string, a ...any) { fmt.Fprintf(tw, format, a...) }
	p("\nlatency (ms)\tn\tp50\tp95\tp99\tmax\n")
	for _, l := range []struct {
		name string
		l    Latency
	}{{"dispatch → offer (server)", r.DispatchToOffer}, {"dispatch → handler start", r.DispatchToStart}, {"queue wait", r.QueueWait}} {
		p("  %s\t%d\t%.0f\t%.0f\t%.0f\t%.0f\n", l.name, l.l.N, l.l.P50, l.l.P95, l.l.P99, l.l.Max)
	}
	p("  (queue wait: %s)\n", r.QueueWaitMeasure)
	if err := tw.Flush(); err != nil {
		return err
	}

	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	p = func(format string, a ...any) { fmt.Fprintf(tw, format, a...) }
	p("\nworker\tdeployment\tran\tpeak running\toffers\tdeclined\tqueued\tqueue timeouts\n")
	for _, w := range r.Workers {
		p("%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", w.WorkerID, orProduction(w.Deployment), w.Ran, w.PeakRunning,
			w.Offers, w.Declined, w.Queued, w.QueueTimeouts)
	}
	p("(peak running: counted by the handlers; offers, declined, queued, queue timeouts: the worker's metrics)\n")
	p("\ntook %s\n", r.Duration.Round(time.Millisecond))
	return tw.Flush()
}

// msDuration prints milliseconds as a duration.
func msDuration(v float64) string {
	return (time.Duration(v * float64(time.Millisecond))).Round(time.Millisecond).String()
}

func orProduction(d string) string {
	if d == "" {
		return "(production)"
	}
	return d
}
