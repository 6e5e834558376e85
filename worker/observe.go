package worker

import (
	"time"

	"github.com/lkagent/lkagent/internal/obs"
)

// observer feeds the worker's metrics.
type observer struct{ m *obs.Worker }

func newObserver(o Options) *observer {
	m := obs.New(o.AgentName, o.Deployment)
	m.Capacity.Set(float64(o.MaxJobs))
	m.QueueCapacity.Set(float64(o.queueCap()))
	return &observer{m: m}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (o *observer) registered(up bool) {
	o.m.Connected.Set(b2f(up))
	if up {
		o.m.Registrations.Inc()
	}
}
func (o *observer) reconnect()                 { o.m.ReconnectAttempts.Inc() }
func (o *observer) disconnected(reason string) { o.m.Disconnects.WithLabelValues(reason).Inc() }
func (o *observer) offer()                     { o.m.OffersReceived.Inc() }
func (o *observer) assignmentTimeout()         { o.m.AssignmentTimeouts.Inc() }
func (o *observer) duplicateAssignment()       { o.m.UnexpectedAssigns.Inc() }
func (o *observer) setLoad(v float64)          { o.m.Load.Set(v) }
func (o *observer) setDraining(v bool)         { o.m.Draining.Set(b2f(v)) }
func (o *observer) statusesDropped(n int)      { o.m.StatusesDropped.Add(float64(n)) }
func (o *observer) migrated(n int)             { o.m.JobsMigrated.Add(float64(n)) }
func (o *observer) accepted(took time.Duration) {
	o.m.OffersAccepted.Inc()
	o.m.DecisionLatency.Observe(took.Seconds())
}
func (o *observer) declined(reason string, took time.Duration) {
	o.m.OffersDeclined.WithLabelValues(reason).Inc()
	o.m.DecisionLatency.Observe(took.Seconds())
}

// jobStarted counts a started job; launch is the time from its assignment,
// observed for jobs that did not wait in the queue.
func (o *observer) jobStarted(launch time.Duration, wasQueued bool) {
	o.m.JobsRunning.Inc()
	if !wasQueued {
		o.m.LaunchLatency.Observe(launch.Seconds())
	}
}
func (o *observer) memoryWarning()            { o.m.MemoryWarnings.Inc() }
func (o *observer) ignoredTermination()       { o.m.IgnoredTerminations.Inc() }
func (o *observer) setQueued(n int)           { o.m.JobsQueued.Set(float64(n)) }
func (o *observer) queueWait(d time.Duration) { o.m.QueueWait.Observe(d.Seconds()) }

// queueLeft counts a queued job that ended without starting.
func (o *observer) queueLeft(status string, waited time.Duration) {
	o.m.JobsFinished.WithLabelValues(status).Inc()
	o.m.QueueWait.Observe(waited.Seconds())
}
func (o *observer) jobFinished(status string, took time.Duration) {
	o.m.JobsRunning.Dec()
	o.m.JobsFinished.WithLabelValues(status).Inc()
	o.m.JobDuration.Observe(took.Seconds())
}
