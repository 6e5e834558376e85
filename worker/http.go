package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/internal/restart"
)

// ProtocolVersion is the agent protocol version reported by /worker.
const ProtocolVersion = 1

// Handler returns the worker's HTTP endpoints, for programs that serve
// them on a server of their own instead of Options.HTTPAddr:
//
//	GET /metrics  Prometheus metrics
//	GET /healthz  200 while the worker runs and its loops turn
//	GET /readyz   200 while registered and not draining, else 503 and why
//	GET /         200 "OK" while registered, else 503 and why (as LiveKit's Python and Node workers answer)
//	GET /worker   JSON description of the worker and its running jobs
//	POST /webhook LiveKit's webhooks, with Options.Webhook (see package guard)
func (w *Worker) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(w.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		if reason := w.unhealthy(); reason != "" {
			http.Error(rw, reason, http.StatusServiceUnavailable)
			return
		}
		_, _ = rw.Write([]byte("OK"))
	})
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) {
		if reason := w.notReady(true); reason != "" {
			http.Error(rw, reason, http.StatusServiceUnavailable)
			return
		}
		_, _ = rw.Write([]byte("OK"))
	})
	mux.HandleFunc("GET /{$}", func(rw http.ResponseWriter, _ *http.Request) {
		if reason := w.notReady(false); reason != "" {
			http.Error(rw, reason, http.StatusServiceUnavailable)
			return
		}
		_, _ = rw.Write([]byte("OK"))
	})
	if w.hookRest != nil {
		mux.HandleFunc("POST "+restart.WebhookPath, func(rw http.ResponseWriter, r *http.Request) {
			wh := w.webhook.Load()
			if wh == nil {
				http.Error(rw, "worker is not running", http.StatusServiceUnavailable)
				return
			}
			wh.ServeHTTP(rw, r)
		})
	}
	mux.HandleFunc("GET /worker", func(rw http.ResponseWriter, _ *http.Request) {
		s := w.Snapshot()
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(workerInfo{
			AgentName:           s.AgentName,
			WorkerType:          w.o.JobType.String(),
			ActiveJobs:          len(s.Jobs) - s.Queued,
			QueuedJobs:          s.Queued,
			SDKVersion:          Version,
			WorkerLoad:          s.Load,
			ProtocolVersion:     ProtocolVersion,
			Deployment:          s.Deployment,
			DeploymentLabel:     deploy.Label(s.Deployment),
			WorkerID:            s.WorkerID,
			Registered:          s.Registered,
			Draining:            s.Draining,
			Jobs:                s.Jobs,
			DispatchesRecovered: w.HeldRecovered(),
		})
	})
	return mux
}

type workerInfo struct {
	AgentName       string        `json:"agent_name"`
	WorkerType      string        `json:"worker_type"`
	ActiveJobs      int           `json:"active_jobs"`
	QueuedJobs      int           `json:"queued_jobs"`
	SDKVersion      string        `json:"sdk_version"`
	WorkerLoad      float64       `json:"worker_load"`
	ProtocolVersion int           `json:"protocol_version"`
	Deployment      string        `json:"deployment"`
	DeploymentLabel string        `json:"deployment_label"`
	WorkerID        string        `json:"worker_id"`
	Registered      bool          `json:"registered"`
	Draining        bool          `json:"draining"`
	Jobs            []JobSnapshot `json:"jobs"`

	// DispatchesRecovered: held dispatches this worker served (held.go).
	DispatchesRecovered int64 `json:"dispatches_recovered"`
}

// unhealthy says why the worker is not live, or "".
func (w *Worker) unhealthy() string {
	if !w.running.Load() {
		return "worker is not running"
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gaveUp {
		return "gave up reconnecting"
	}
	if w.connected && time.Since(w.lastLoop) > 3*w.o.StatusInterval+w.o.PingInterval {
		return fmt.Sprintf("worker loop stalled: last turned %s ago", time.Since(w.lastLoop).Round(time.Second))
	}
	if w.loads != nil {
		if d := w.loads.stuckFor(); d > 3*w.o.StatusInterval {
			return fmt.Sprintf("LoadFunc has not returned for %s", d.Round(time.Second))
		}
	}
	return ""
}

// notReady says why the worker takes no jobs, or "".
func (w *Worker) notReady(checkDraining bool) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.gaveUp:
		return "gave up reconnecting"
	case w.exec.unavailable() != "":
		return "full: " + w.exec.unavailable()
	case !w.connected && w.hint != "":
		return "not registered with the LiveKit server: " + w.hint
	case !w.connected:
		return "not registered with the LiveKit server"
	case checkDraining && w.draining:
		return "draining"
	}
	return ""
}

// listenHTTP binds Options.HTTPAddr and records the bound address.
func (w *Worker) listenHTTP() (net.Listener, error) {
	ln, err := net.Listen("tcp", w.o.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("worker: HTTPAddr %q: %w", w.o.HTTPAddr, err)
	}
	w.mu.Lock()
	w.httpAddr = ln.Addr().String()
	w.mu.Unlock()
	return ln, nil
}

// serveHTTP serves Handler on ln until the returned stop is called.
func (w *Worker) serveHTTP(ln net.Listener) (stop func()) {
	hs := &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			w.log.Error("HTTP server failed", slog.Any("error", err))
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		<-done
		w.mu.Lock()
		w.httpAddr = ""
		w.mu.Unlock()
	}
}

// HTTPAddr is the address the HTTP endpoints listen on while Run runs
// (useful with HTTPAddr ":0"), or "".
func (w *Worker) HTTPAddr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.httpAddr
}
