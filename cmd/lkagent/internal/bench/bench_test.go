package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i, x := range v {
			d[i] = time.Duration(x) * time.Millisecond
		}
		return d
	}
	for _, tc := range []struct {
		in   []time.Duration
		want Latency
	}{
		{nil, Latency{}},
		{ms(5), Latency{N: 1, P50: 5, P95: 5, P99: 5, Max: 5}},
		{ms(4, 1, 3, 2), Latency{N: 4, P50: 2, P95: 4, P99: 4, Max: 4}},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 100), Latency{N: 20, P50: 10, P95: 19, P99: 100, Max: 100}},
	} {
		if got := summarize(tc.in); got != tc.want {
			t.Errorf("summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestWriteTableShowsRouting(t *testing.T) {
	rep := &Report{AgentName: "a", Deployments: []string{"", "staging"}, WorkersPerDeployment: 1, JobType: "JT_ROOM",
		Registration: Latency{N: 2, P50: 1, P95: 2, P99: 2, Max: 2}, RoutingChecked: 8, RoutingViolations: 0,
		Sequential: Phase{DispatchToHandler: Latency{N: 4, P50: 200, P95: 210, P99: 210, Max: 210}}}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"registration", "dispatch → handler", "8 jobs checked, 0 violations", `"staging"`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestErrorsAreShownWithTheirText(t *testing.T) {
	got := countDistinct([]string{"job never started", "dial: refused", "job never started"})
	want := []string{"job never started (×2)", "dial: refused"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("countDistinct = %q, want %q", got, want)
	}
	if got := countDistinct(nil); len(got) != 0 {
		t.Errorf("countDistinct(nil) = %q, want none", got)
	}
	rep := &Report{Concurrent: Phase{Concurrency: 50, Errors: 2, ErrorTexts: want}}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, w := range append([]string{"errors"}, want...) {
		if !strings.Contains(b.String(), w) {
			t.Errorf("table lacks %q:\n%s", w, b.String())
		}
	}
}
