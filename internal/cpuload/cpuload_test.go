package cpuload

import (
	"testing"
	"time"
)

func TestParseV2(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
		ok   bool
	}{
		{"max 100000\n", 0, false},
		{"200000 100000\n", 2, true},
		{"50000 100000", 0.5, true},
		{"-1 100000", 0, false},
		{"garbage", 0, false},
	} {
		got, ok := parseV2(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseV2(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestLoadIsUsageOverWallTimeAndCPUs(t *testing.T) {
	now := time.Unix(0, 0)
	cpu := time.Duration(0)
	m := &Meter{cpus: 2, minWindow: time.Second, now: func() time.Time { return now }, usage: func() time.Duration { return cpu }}
	m.lastAt = now
	now, cpu = now.Add(2*time.Second), time.Second // 1 CPU-second in 2 s on 2 CPUs
	if got := m.Load(); got != 0.25 {
		t.Fatalf("Load = %v, want 0.25", got)
	}
	now, cpu = now.Add(500*time.Millisecond), 10*time.Second // within the window: previous value
	if got := m.Load(); got != 0.25 {
		t.Fatalf("Load within the window = %v, want 0.25", got)
	}
	now = now.Add(time.Second) // 9 CPU-seconds in 1.5 s: clamped
	if got := m.Load(); got != 1 {
		t.Fatalf("Load = %v, want clamped to 1", got)
	}
	if Limit() <= 0 {
		t.Fatal("Limit must be positive")
	}
}
