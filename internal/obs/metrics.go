// Package obs holds a worker's Prometheus collectors. The worker creates and
// feeds them; package metrics names and documents them for users (a test
// here keeps the two in step).
package obs

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/metrics"
)

// Worker holds one worker's collectors. The collectors are safe for
// concurrent use, as every Prometheus collector is.
type Worker struct {
	Connected           prometheus.Gauge
	Registrations       prometheus.Counter
	ReconnectAttempts   prometheus.Counter
	Disconnects         *prometheus.CounterVec
	OffersReceived      prometheus.Counter
	OffersAccepted      prometheus.Counter
	OffersDeclined      *prometheus.CounterVec
	AssignmentTimeouts  prometheus.Counter
	UnexpectedAssigns   prometheus.Counter
	JobsRunning         prometheus.Gauge
	JobsFinished        *prometheus.CounterVec
	JobDuration         prometheus.Histogram
	LaunchLatency       prometheus.Histogram
	DecisionLatency     prometheus.Histogram
	Load                prometheus.Gauge
	Draining            prometheus.Gauge
	StatusesDropped     prometheus.Counter
	JobsMigrated        prometheus.Counter
	Capacity            prometheus.Gauge
	QueueCapacity       prometheus.Gauge
	JobsQueued          prometheus.Gauge
	QueueWait           prometheus.Histogram
	MemoryWarnings      prometheus.Counter
	IgnoredTerminations prometheus.Counter
}

// New creates a worker's collectors labelled with agentName and deployment
// ("" is production, labelled "_production"). Register them with
// [Worker.Register].
func New(agentName, deployment string) *Worker {
	labels := prometheus.Labels{"agent_name": agentName, "deployment": deploy.Label(deployment)}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: name, Help: help, ConstLabels: labels})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: name, Help: help, ConstLabels: labels})
	}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metrics.Namespace, Name: name, Help: help, ConstLabels: labels, Buckets: buckets})
	}
	fast := prometheus.ExponentialBuckets(0.00001, 4, 12) // 10µs … ~42s
	m := &Worker{
		Connected:         gauge("connected", "1 while the worker is registered with the server, else 0."),
		Registrations:     counter("registrations_total", "Successful registrations with the server."),
		ReconnectAttempts: counter("reconnect_attempts_total", "Reconnect attempts after a lost or failed connection."),
		Disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "disconnects_total",
			Help: "Connections lost, by reason.", ConstLabels: labels}, []string{"reason"}),
		OffersReceived: counter("offers_received_total", "Job offers (availability requests) received."),
		OffersAccepted: counter("offers_accepted_total", "Job offers accepted."),
		OffersDeclined: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "offers_declined_total",
			Help: "Job offers declined, by reason.", ConstLabels: labels}, []string{"reason"}),
		AssignmentTimeouts: counter("assignment_timeouts_total", "Accepted offers whose assignment never came; their slot was released."),
		UnexpectedAssigns:  counter("unexpected_assignments_total", "Assignments for jobs this worker did not accept or already ran; not run."),
		JobsRunning:        gauge("jobs_running", "Jobs whose handler is running."),
		JobsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "jobs_finished_total",
			Help: "Jobs ended, by status: success, failed, terminated, panicked; in job processes also crashed, memory_limit, killed, start_failed; queued jobs that never started: queue_timeout, drain_timeout.", ConstLabels: labels}, []string{"status"}),
		JobDuration:     hist("job_duration_seconds", "Time from handler start to job end.", prometheus.ExponentialBuckets(0.01, 4, 12)),
		LaunchLatency:   hist("job_launch_latency_seconds", "Time from assignment received to handler started.", fast),
		DecisionLatency: hist("offer_decision_latency_seconds", "Time from offer received to availability answer.", fast),
		Load:            gauge("load", "Load the worker reports to the server, 0 to 1."),
		Draining:        gauge("draining", "1 while the worker drains, else 0."),
		StatusesDropped: counter("job_statuses_dropped_total",
			"Job statuses not sent because the connection their job was assigned on had ended (the server forgot that connection's jobs)."),
		JobsMigrated: counter("jobs_migrated_total",
			"Running jobs reported to the server in a MigrateJob request after they outlived their connection."),
		Capacity:      gauge("capacity", "Jobs the worker runs at once (MaxJobs; 0 = no cap)."),
		QueueCapacity: gauge("queue_capacity", "Accepted jobs that may wait for a slot (MaxQueued)."),
		JobsQueued:    gauge("jobs_queued", "Accepted jobs waiting for a slot."),
		QueueWait: hist("queue_wait_seconds", "Time a job waited in the queue, until it started or gave up.",
			prometheus.ExponentialBuckets(0.01, 2, 14)), // 10ms … ~82s
		MemoryWarnings: counter("job_memory_warnings_total", "Job processes whose resident set passed MemoryWarn."),
		IgnoredTerminations: counter("jobs_ignoring_termination_total",
			"Jobs still running ShutdownTimeout after the server terminated them (their handler ignores its context)."),
	}
	return m
}

// Collectors returns every collector of m.
func (m *Worker) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Connected, m.Registrations, m.ReconnectAttempts, m.Disconnects,
		m.OffersReceived, m.OffersAccepted, m.OffersDeclined, m.AssignmentTimeouts, m.UnexpectedAssigns,
		m.JobsRunning, m.JobsFinished, m.JobDuration, m.LaunchLatency, m.DecisionLatency, m.Load, m.Draining,
		m.StatusesDropped, m.JobsMigrated, m.Capacity, m.QueueCapacity, m.JobsQueued, m.QueueWait,
		m.MemoryWarnings, m.IgnoredTerminations}
}

// Register registers every collector of m with reg. The same collectors
// can be registered with several registries.
func (m *Worker) Register(reg prometheus.Registerer) error {
	for _, c := range m.Collectors() {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
