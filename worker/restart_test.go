package worker

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Which job ends restart the agent: failures the worker sees, not the
// handler's own verdict unless asked, nor ends the server or the worker
// decided.
func TestRestartable(t *testing.T) {
	t.Parallel()
	w, err := newWorker(validOptions(), noop, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	for status, want := range map[EndStatus]bool{
		"panicked": true, "crashed": true, "memory_limit": true, "start_failed": true,
		"failed": false, "success": false, "terminated": false, "killed": false,
		"queue_timeout": false, "drain_timeout": false,
	} {
		if got := w.restartable(status); got != want {
			t.Errorf("restartable(%q) = %v, want %v", status, got, want)
		}
	}
	o := validOptions()
	o.Restart.OnHandlerError = true
	if w, _ := newWorker(o, noop, noEnv); !w.restartable("failed") {
		t.Errorf("a handler error is not restarted with OnHandlerError")
	}
	o = validOptions()
	o.Restart.Disabled = true
	if w, _ := newWorker(o, noop, noEnv); w.restartable("crashed") {
		t.Errorf("a crash is restarted with restarts disabled")
	}
}

// The restart metrics reach Options.Registerer as well as the worker's
// own registry.
func TestRestartMetricsReachTheRegisterer(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	o := validOptions()
	o.Registerer = reg
	if _, err := newWorker(o, noop, noEnv); err != nil {
		t.Fatal(err)
	}
	// A vector without series is not gathered: registering the same
	// collector again tells whether it is there.
	probe := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "lkagent", Name: "restarts_total",
		Help: "Failed agents restarted: their dispatch replaced by a new one."}, []string{"agent_name", "deployment"})
	if err := reg.Register(probe); err == nil {
		t.Fatal("lkagent_restarts_total was not registered with Options.Registerer")
	}
}
