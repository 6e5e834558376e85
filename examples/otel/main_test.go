package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/lkagent/lkagent/livekittest"
)

var shared livekittest.Shared

// TestMain stops the shared server after the last test.
func TestMain(m *testing.M) { os.Exit(shared.Run(m)) }

// collector is an OTLP/HTTP trace receiver: it keeps the spans it is sent
// with their resource's service.name.
type collector struct {
	mu    sync.Mutex
	spans []span
}

type span struct {
	service string
	s       *tracepb.Span
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var req coltrace.ExportTraceServiceRequest
	if err != nil || r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spans = append(c.spans, span{service, s})
			}
		}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	_, _ = w.Write(b)
}

// find returns the first span named name for which match is true.
func (c *collector) find(name string, match func(*tracepb.Span) bool) (span, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.spans {
		if s.s.GetName() == name && match(s.s) {
			return s, true
		}
	}
	return span{}, false
}

func attr(s *tracepb.Span, key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

// The agent's jobs reach an OTLP collector configured by the standard
// variables, in both executors: the worker's job span with the job's
// room, agent and deployment, and the handler's span as its child (made,
// with --processes, in the job process, which flushes it before it exits).
func TestJobsAreTraced(t *testing.T) {
	srv := shared.Server(t)
	bin := livekittest.Build(t, ".")
	for _, tc := range []struct {
		name string
		args []string
	}{{"in process", nil}, {"job processes", []string{"--processes"}}} {
		t.Run(tc.name, func(t *testing.T) {
			col := &collector{}
			hs := httptest.NewServer(col)
			defer hs.Close()
			agentName, room := livekittest.UniqueName("traced"), livekittest.UniqueName("room")
			p := srv.StartProgram(t, bin, []string{"LIVEKIT_AGENT_DEPLOYMENT=staging",
				"OTEL_SERVICE_NAME=echo-traced", "OTEL_EXPORTER_OTLP_ENDPOINT=" + hs.URL, "OTEL_BSP_SCHEDULE_DELAY=100",
				"OTEL_TRACES_SAMPLER=always_on"},
				append([]string{"--agent-name", agentName}, tc.args...)...)

			srv.Dispatch(t, room, agentName, "staging", "")
			srv.WaitForAgent(t, room, agentName) // joined, its connection up
			srv.DeleteRoom(t, room)              // ends the job

			var job, session span
			livekittest.Eventually(t, time.Minute, "the job's span and its handler's span at the collector", func() bool {
				var ok bool
				if job, ok = col.find("lkagent.job", func(s *tracepb.Span) bool { return attr(s, "livekit.room") == room }); !ok {
					return false
				}
				session, ok = col.find("echo.session", func(s *tracepb.Span) bool { return bytes.Equal(s.GetTraceId(), job.s.GetTraceId()) })
				return ok
			})
			if !strings.HasPrefix(attr(job.s, "lkagent.job.id"), "AJ_") {
				t.Errorf("job span without the job's id: %v", job.s.GetAttributes())
			}
			for key, want := range map[string]string{"livekit.room": room, "lkagent.agent.name": agentName,
				"lkagent.deployment": "staging", "lkagent.job.outcome": "success"} {
				if got := attr(job.s, key); got != want {
					t.Errorf("job span attribute %s = %q, want %q", key, got, want)
				}
			}
			if job.service != "echo-traced" || session.service != "echo-traced" {
				t.Errorf("service names %q, %q; want OTEL_SERVICE_NAME's", job.service, session.service)
			}
			if !bytes.Equal(session.s.GetParentSpanId(), job.s.GetSpanId()) {
				t.Errorf("echo.session's parent is %x, want the job's span %x", session.s.GetParentSpanId(), job.s.GetSpanId())
			}
			p.Signal(t, os.Interrupt)
			if code := p.Wait(t); code != 0 {
				t.Errorf("exit code %d", code)
			}
		})
	}
}
