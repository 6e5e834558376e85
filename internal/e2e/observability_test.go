package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue reads one series from a /metrics body: name with the given
// labels (a subset), summed over the rest.
func metricValue(t *testing.T, body, name string, labels map[string]string) (float64, uint64) {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	fam, ok := fams[name]
	if !ok {
		return 0, 0
	}
	var sum float64
	var count uint64
	for _, m := range fam.GetMetric() {
		match := true
		for k, v := range labels {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			count += m.GetHistogram().GetSampleCount()
		}
	}
	return sum, count
}

// One staging and one production worker run real jobs; their /metrics
// count them per deployment, histograms observed samples, /worker lists the
// running job, and /readyz flips to 503 while draining.
func TestMetricsAndEndpointsPerDeployment(t *testing.T) {
	t.Parallel()
	agent := uniq("obs")
	release := make(chan struct{})
	hold := func(ctx context.Context, j *job.Job) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		if j.Metadata() == "fail" {
			return errors.New("planned failure")
		}
		return nil
	}
	ws := startWorker(t, worker.Options{AgentName: agent, Deployment: "staging", HTTPAddr: "127.0.0.1:0", DrainTimeout: time.Minute}, hold)
	wp := startWorker(t, worker.Options{AgentName: agent, HTTPAddr: "127.0.0.1:0"}, hold)
	stagingURL, prodURL := "http://"+ws.HTTPAddr(), "http://"+wp.HTTPAddr()

	for _, u := range []string{stagingURL, prodURL} {
		if code, body := get(t, u+"/readyz"); code != 200 {
			t.Fatalf("%s/readyz = %d %q while registered", u, code, body)
		}
		if code, body := get(t, u+"/"); code != 200 || body != "OK" {
			t.Fatalf("%s/ = %d %q", u, code, body)
		}
	}

	room := uniq("room")
	createDispatch(t, agent, room, "staging")
	waitFor(t, 20*time.Second, "the staging job to run", func() bool { return len(ws.Snapshot().Jobs) == 1 })
	code, body := get(t, stagingURL+"/worker")
	var info struct {
		AgentName       string  `json:"agent_name"`
		WorkerType      string  `json:"worker_type"`
		ActiveJobs      int     `json:"active_jobs"`
		Deployment      string  `json:"deployment"`
		ProtocolVersion int     `json:"protocol_version"`
		WorkerID        string  `json:"worker_id"`
		WorkerLoad      float64 `json:"worker_load"`
		Jobs            []struct {
			ID   string `json:"id"`
			Room string `json:"room"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(body), &info); err != nil || code != 200 {
		t.Fatalf("/worker = %d %q: %v", code, body, err)
	}
	if info.AgentName != agent || info.Deployment != "staging" || info.ActiveJobs != 1 || info.ProtocolVersion != 1 ||
		info.WorkerType != "JT_ROOM" || !strings.HasPrefix(info.WorkerID, "AW_") || len(info.Jobs) != 1 || info.Jobs[0].Room != room {
		t.Fatalf("/worker = %+v", info)
	}

	// Production: one job that fails.
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if _, err := dispatchClient().CreateDispatch(dctx, &livekit.CreateAgentDispatchRequest{
		AgentName: agent, Room: uniq("room"), Metadata: "fail",
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the production job to run", func() bool { return len(wp.Snapshot().Jobs) == 1 })
	close(release)
	waitFor(t, 20*time.Second, "both jobs to end", func() bool {
		return len(ws.Snapshot().Jobs) == 0 && len(wp.Snapshot().Jobs) == 0
	})

	_, sm := get(t, stagingURL+"/metrics")
	_, pm := get(t, prodURL+"/metrics")
	st := map[string]string{"agent_name": agent, "deployment": "staging"}
	pr := map[string]string{"agent_name": agent, "deployment": worker.ProductionLabel}
	check := func(body, name string, labels map[string]string, want float64) {
		t.Helper()
		if got, _ := metricValue(t, body, name, labels); got != want {
			t.Errorf("%s%v = %v, want %v", name, labels, got, want)
		}
	}
	check(sm, "lkagent_offers_accepted_total", st, 1)
	check(sm, "lkagent_jobs_finished_total", map[string]string{"agent_name": agent, "deployment": "staging", "status": "success"}, 1)
	check(sm, "lkagent_connected", st, 1)
	check(sm, "lkagent_registrations_total", st, 1)
	check(pm, "lkagent_offers_accepted_total", pr, 1)
	check(pm, "lkagent_jobs_finished_total", map[string]string{"agent_name": agent, "deployment": worker.ProductionLabel, "status": "failed"}, 1)
	check(pm, "lkagent_jobs_finished_total", map[string]string{"agent_name": agent, "deployment": worker.ProductionLabel, "status": "success"}, 0)
	// /worker names production readably too, next to its empty deployment.
	if _, body := get(t, prodURL+"/worker"); !strings.Contains(body, `"deployment":""`) || !strings.Contains(body, `"deployment_label":"_production"`) {
		t.Errorf("production /worker = %s", body)
	}
	for _, h := range []string{"lkagent_job_duration_seconds", "lkagent_job_launch_latency_seconds", "lkagent_offer_decision_latency_seconds"} {
		if _, n := metricValue(t, sm, h, st); n != 1 {
			t.Errorf("%s observed %d samples on staging, want 1", h, n)
		}
	}

	// Drain: /readyz turns 503 with the reason while a job keeps running.
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ws.Drain(dctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	code, body = get(t, stagingURL+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Fatalf("/readyz while draining = %d %q, want 503 draining", code, body)
	}
	if v, _ := metricValue(t, func() string { _, b := get(t, stagingURL+"/metrics"); return b }(), "lkagent_draining", st); v != 1 {
		t.Errorf("lkagent_draining = %v while draining", v)
	}
}

// /readyz and / answer 503 before the worker registered.
func TestReadyzBeforeRegistration(t *testing.T) {
	t.Parallel()
	w, err := worker.New(worker.Options{URL: "ws://127.0.0.1:1", APIKey: "k", APISecret: "s", AgentName: "x",
		HTTPAddr: "127.0.0.1:0", Logger: testLogger(t), MinBackoff: time.Second}, func(context.Context, *job.Job) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, "the HTTP endpoints", func() bool { return w.HTTPAddr() != "" })
	for _, path := range []string{"/readyz", "/"} {
		code, body := get(t, "http://"+w.HTTPAddr()+path)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "not registered") {
			t.Fatalf("%s before registration = %d %q, want 503 not registered", path, code, body)
		}
	}
	if code, _ := get(t, "http://"+w.HTTPAddr()+"/healthz"); code != 200 {
		t.Fatalf("/healthz of a running, reconnecting worker = %d, want 200", code)
	}
}

// No secret, worker token or job token appears in any log line, error or
// metric label over a full job lifecycle and a failed registration.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	logs := &syncbuf.Buffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	agent := uniq("secret")
	tokens := make(chan string, 1)
	w := startWorker(t, worker.Options{AgentName: agent, Logger: logger, HTTPAddr: "127.0.0.1:0"}, func(ctx context.Context, j *job.Job) error {
		if _, err := j.Connect(ctx, nil); err != nil {
			return err
		}
		tokens <- "joined"
		return errors.New("handler failed on purpose")
	})
	createDispatch(t, agent, uniq("room"), "")
	select {
	case <-tokens:
	case <-time.After(30 * time.Second):
		t.Fatal("job did not run")
	}
	waitFor(t, 20*time.Second, "job end", func() bool { return len(w.Snapshot().Jobs) == 0 })
	_, metricsBody := get(t, "http://"+w.HTTPAddr()+"/metrics")

	// A wrong secret: Run fails fast with ErrUnauthorized.
	badSecret := "wrong-secret-" + uniq("s")
	bad, err := worker.New(worker.Options{URL: srv.URL(), APIKey: srv.APIKey(), APISecret: badSecret, AgentName: agent, Logger: logger},
		func(context.Context, *job.Job) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runErr := bad.Run(ctx)
	if !errors.Is(runErr, worker.ErrUnauthorized) {
		t.Fatalf("Run with a wrong secret = %v, want ErrUnauthorized", runErr)
	}
	// Every JWT (the worker's own, the job's join token) starts with the
	// encoded header {"alg":...
	workerToken, _ := auth.NewAccessToken(srv.APIKey(), srv.APISecret()).SetVideoGrant(&auth.VideoGrant{Agent: true}).ToJWT()
	jwtHeader := strings.SplitN(workerToken, ".", 2)[0]
	all := logs.String() + runErr.Error() + metricsBody
	for name, secret := range map[string]string{"API secret": srv.APISecret(), "wrong secret": badSecret, "JWT": jwtHeader} {
		if strings.Contains(all, secret) {
			t.Errorf("the %s appears in logs, errors or metrics", name)
		}
	}
	if !strings.Contains(logs.String(), "job failed") {
		t.Errorf("the logs do not cover the job's lifecycle:\n%s", logs.String())
	}
}
