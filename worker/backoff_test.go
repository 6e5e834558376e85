package worker

import (
	"testing"
	"time"
)

func TestBackoffGrowsCappedWithFullJitter(t *testing.T) {
	lo0, hi0 := 100*time.Millisecond, 2*time.Second
	for _, tc := range []struct {
		attempt int
		ceiling time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{5, 1600 * time.Millisecond},
		{6, 2 * time.Second},
		{50, 2 * time.Second},
	} {
		var lo, hi time.Duration = hi0, 0
		for range 2000 {
			d := backoff(tc.attempt, lo0, hi0)
			if d < 0 || d > tc.ceiling {
				t.Fatalf("attempt %d: delay %s outside [0, %s]", tc.attempt, d, tc.ceiling)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Full jitter spreads over the whole range.
		if lo > tc.ceiling/10 || hi < tc.ceiling*9/10 {
			t.Errorf("attempt %d: delays span [%s, %s], want most of [0, %s]", tc.attempt, lo, hi, tc.ceiling)
		}
	}
}
