package restart

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// namespace prefixes every metric name, as in package metrics.
const namespace = "lkagent"

// Webhook request results, the values of the "result" label of
// lkagent_guard_webhooks_total.
const (
	webhookAccepted     = "accepted"     // a departing agent: handed to the restarter
	webhookIgnored      = "ignored"      // a valid event that is not an agent leaving
	webhookDuplicate    = "duplicate"    // an event id already received
	webhookUnauthorized = "unauthorized" // bad or missing signature: 401
	webhookBusy         = "busy"         // too many restarts running, or closing: 503
	webhookTooLarge     = "too_large"    // a body over MaxBodyBytes: 413
)

// collectors are a Restarter's and its Webhook's Prometheus collectors.
// Labels: agent_name and deployment (bounded by the agents a project runs),
// a refusal [Outcome], a webhook result. Rooms, identities and ids go
// to the log only.
type collectors struct {
	restarts *prometheus.CounterVec
	refusals *prometheus.CounterVec
	errors   *prometheus.CounterVec
	webhooks *prometheus.CounterVec
}

func newCollectors(reg prometheus.Registerer) (*collectors, error) {
	c := &collectors{
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "restarts_total",
			Help: "Failed agents restarted: their dispatch replaced by a new one."}, []string{"agent_name", "deployment"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "restart_refusals_total",
			Help: "Departed agents not restarted, by reason: not_failure, policy_never, room_gone, room_empty, already_handled, cap_reached, unsupported_job."},
			[]string{"agent_name", "deployment", "reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "restart_errors_total",
			Help: "Failures that could not be decided or carried out because a call to the server failed."}, []string{"agent_name", "deployment"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "guard_webhooks_total",
			Help: "Webhook requests received, by result: accepted, ignored, duplicate, unauthorized, busy, too_large."}, []string{"result"}),
	}
	for _, p := range []**prometheus.CounterVec{&c.restarts, &c.refusals, &c.errors, &c.webhooks} {
		if err := reg.Register(*p); err != nil {
			// Another Restarter registered the same collectors: share them.
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
			existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
			if !ok {
				return nil, err
			}
			*p = existing
		}
	}
	return c, nil
}
