// Package metrics names and documents the Prometheus metrics of lkagent: a
// worker's (served on its /metrics, Options.HTTPAddr, and registered with
// Options.Registerer when set) and those of the restarts and held dispatches
// (package guard, and workers with Options.Restart and Options.Held). Use
// the constants in dashboards, alerts and tests instead of spelling the
// names out:
//
//	rate(lkagent_jobs_finished_total{status="failed"}[5m])
//
// Every series of a worker carries the labels [LabelAgentName] and
// [LabelDeployment], so staging and production workers can be compared side
// by side. Production, the empty deployment, is labelled
// [ProductionDeployment] ("_production"), a value the LiveKit server refuses
// as a deployment name, so it never collides with one. No series carries a
// job id, room or identity (those go to the logs), so the label sets stay
// bounded.
//
// The collectors themselves belong to the worker and the guard; a program
// scrapes them, or passes its own registry (which may wrap another, with
// prometheus.WrapRegistererWith, to add pod labels).
package metrics

// Namespace prefixes every metric name.
const Namespace = "lkagent"

// Labels.
const (
	// LabelAgentName is the worker's agent name ("" for the automatic
	// agent), on every series of a worker and of restarts.
	LabelAgentName = "agent_name"
	// LabelDeployment is the worker's deployment, [ProductionDeployment]
	// for production.
	LabelDeployment = "deployment"
	// LabelStatus is how a job ended, on [JobsFinished]: a worker.EndStatus
	// ("success", "failed", "terminated", "panicked"; with job processes
	// also "crashed", "memory_limit", "killed", "start_failed"; for queued
	// jobs that never started "queue_timeout", "drain_timeout").
	LabelStatus = "status"
	// LabelReason is why, on [Disconnects], [OffersDeclined] and
	// [RestartRefusals] (a guard.Outcome).
	LabelReason = "reason"
	// LabelResult is a webhook request's result, on [GuardWebhooks]:
	// "accepted", "ignored", "duplicate", "unauthorized", "busy",
	// "too_large".
	LabelResult = "result"
)

// ProductionDeployment is the value of [LabelDeployment] for production (the
// empty deployment). The LiveKit server refuses '_' in deployment names, so
// no real deployment is labelled so.
const ProductionDeployment = "_production"

// A worker's metrics. Each carries [LabelAgentName] and [LabelDeployment];
// the labels named here come in addition.
const (
	// Connected is 1 while the worker is registered with the server, else 0.
	Connected = "lkagent_connected"
	// Registrations counts successful registrations with the server.
	Registrations = "lkagent_registrations_total"
	// ReconnectAttempts counts reconnects after a lost or failed connection.
	ReconnectAttempts = "lkagent_reconnect_attempts_total"
	// Disconnects counts connections lost, by [LabelReason]: "pong_timeout",
	// "go_away", "malformed_frame", "refused", "registration_timeout",
	// "connect_failed", "closed_by_server", "connection_lost".
	Disconnects = "lkagent_disconnects_total"
	// OffersReceived counts job offers (availability requests) received.
	OffersReceived = "lkagent_offers_received_total"
	// OffersAccepted counts job offers accepted.
	OffersAccepted = "lkagent_offers_accepted_total"
	// OffersDeclined counts job offers declined, by [LabelReason]:
	// "foreign_agent", "foreign_deployment", "foreign_job_type",
	// "duplicate", "full", "draining", "rejected_by_handler",
	// "request_error".
	OffersDeclined = "lkagent_offers_declined_total"
	// AssignmentTimeouts counts accepted offers whose assignment never
	// came; their slot was released.
	AssignmentTimeouts = "lkagent_assignment_timeouts_total"
	// UnexpectedAssignments counts assignments for jobs this worker did not
	// accept or already ran; they are not run.
	UnexpectedAssignments = "lkagent_unexpected_assignments_total"
	// JobsRunning is the number of jobs whose handler is running.
	JobsRunning = "lkagent_jobs_running"
	// JobsFinished counts jobs ended, by [LabelStatus].
	JobsFinished = "lkagent_jobs_finished_total"
	// JobDuration is a histogram of the time from handler start to job end,
	// in seconds.
	JobDuration = "lkagent_job_duration_seconds"
	// JobLaunchLatency is a histogram of the time from assignment received
	// to handler started, in seconds.
	JobLaunchLatency = "lkagent_job_launch_latency_seconds"
	// OfferDecisionLatency is a histogram of the time from offer received
	// to answer sent, in seconds.
	OfferDecisionLatency = "lkagent_offer_decision_latency_seconds"
	// Load is the load the worker reports to the server, 0 to 1.
	Load = "lkagent_load"
	// Draining is 1 while the worker drains, else 0.
	Draining = "lkagent_draining"
	// JobStatusesDropped counts job statuses not sent because the
	// connection their job was assigned on had ended (the server forgot
	// that connection's jobs).
	JobStatusesDropped = "lkagent_job_statuses_dropped_total"
	// JobsMigrated counts running jobs named in a MigrateJob request after
	// they outlived their connection.
	JobsMigrated = "lkagent_jobs_migrated_total"
	// Capacity is how many jobs the worker runs at once (MaxJobs; 0 = no
	// cap).
	Capacity = "lkagent_capacity"
	// QueueCapacity is how many accepted jobs may wait for a slot
	// (MaxQueued).
	QueueCapacity = "lkagent_queue_capacity"
	// JobsQueued is the number of accepted jobs waiting for a slot.
	JobsQueued = "lkagent_jobs_queued"
	// QueueWait is a histogram of the time a job waited in the queue, until
	// it started or gave up, in seconds.
	QueueWait = "lkagent_queue_wait_seconds"
	// JobMemoryWarnings counts job processes whose resident set passed
	// MemoryWarn.
	JobMemoryWarnings = "lkagent_job_memory_warnings_total"
	// JobsIgnoringTermination counts jobs still running ShutdownTimeout
	// after the server terminated them (their handler ignores its context).
	JobsIgnoringTermination = "lkagent_jobs_ignoring_termination_total"
)

// The metrics of restarts and held dispatches, kept by a guard and by
// workers with restarts or held dispatches on. They carry [LabelAgentName]
// and [LabelDeployment] as ordinary labels (one Restarter serves many
// agents), except [GuardWebhooks].
const (
	// Restarts counts failed agents restarted: their dispatch replaced by a
	// new one.
	Restarts = "lkagent_restarts_total"
	// RestartRefusals counts departed agents not restarted, by
	// [LabelReason] (a guard.Outcome): "not_failure", "policy_never",
	// "room_gone", "room_empty", "already_handled", "cap_reached",
	// "unsupported_job".
	RestartRefusals = "lkagent_restart_refusals_total"
	// RestartErrors counts failures that could not be decided or carried
	// out because a call to the server failed.
	RestartErrors = "lkagent_restart_errors_total"
	// GuardWebhooks counts webhook requests received, by [LabelResult]
	// only.
	GuardWebhooks = "lkagent_guard_webhooks_total"
	// DispatchesUnserved is the number of dispatches with no job at the
	// last sweep of a guard.Held: the signal to scale a deployment from
	// zero.
	DispatchesUnserved = "lkagent_dispatches_unserved"
	// DispatchesRecovered counts held dispatches (dropped by the server: no
	// worker took their job) served by re-creating them.
	DispatchesRecovered = "lkagent_dispatches_recovered_total"
)
