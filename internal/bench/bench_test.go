package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/lkserver"
)

// A small run against the real server: every figure is filled in, the JSON
// form is complete, and no job crossed deployments.
func TestRunAgainstRealServer(t *testing.T) {
	lksdk.SetLogger(lklogger.GetDiscardLogger())
	s := lkserver.StartTB(t, lkserver.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	rep, err := Run(ctx, Config{URL: s.URL(), APIKey: s.APIKey(), APISecret: s.APISecret(),
		Jobs: 6, Concurrency: 3, MemoryJobs: 4, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RoutingViolations != 0 || rep.Lost != 0 || rep.RoutingChecked != 12 {
		t.Fatalf("routing: %d checked, %d violations, %d lost", rep.RoutingChecked, rep.RoutingViolations, rep.Lost)
	}
	for name, l := range map[string]Latency{
		"registration": rep.Registration, "seq dispatch→handler": rep.Sequential.DispatchToHandler,
		"seq dispatch→offer": rep.Sequential.DispatchToOffer, "seq offer→handler": rep.Sequential.OfferToHandler,
		"conc dispatch→handler": rep.Concurrent.DispatchToHandler, "seq visible": rep.Sequential.DispatchToVisible,
	} {
		if l.N == 0 || l.P50 <= 0 || l.Max < l.P50 {
			t.Errorf("%s: %+v", name, l)
		}
	}
	if rep.Memory.IdleRSSBytes == 0 || rep.Memory.RSSWithJobsBytes == 0 || rep.Memory.RSSWithJoinedBytes == 0 {
		t.Errorf("memory: %+v", rep.Memory)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"registration", "sequential", "concurrent", "memory", "routing_violations", "routing_checked"} {
		if _, ok := back[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "0 violations") || !strings.Contains(progress.String(), "sequential") {
		t.Errorf("table:\n%s\nprogress:\n%s", table.String(), progress.String())
	}
	t.Logf("\n%s", table.String())
}
