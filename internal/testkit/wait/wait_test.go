package wait

import (
	"fmt"
	"testing"
	"time"
)

// fatalRecorder records Fatalf and stops the caller as FailNow would.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(f)
}

func (f *fatalRecorder) Helper() {}

func TestUntil(t *testing.T) {
	for _, tc := range []struct {
		name    string
		holdsAt int // the check at which cond first holds; 0: never
		within  time.Duration
		wantMsg string
	}{
		{name: "at once", holdsAt: 1, within: time.Second},
		{name: "at the fifth check", holdsAt: 5, within: 10 * time.Second},
		{name: "never", within: 60 * time.Millisecond, wantMsg: "no the thing within 60ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := &fatalRecorder{TB: t}
			checks := 0
			start := time.Now()
			func() {
				defer func() {
					if r := recover(); r != nil && r != any(ft) {
						panic(r)
					}
				}()
				Until(ft, tc.within, "the thing", func() bool {
					checks++
					return checks == tc.holdsAt
				})
			}()
			if ft.msg != tc.wantMsg {
				t.Fatalf("failure %q, want %q", ft.msg, tc.wantMsg)
			}
			if tc.holdsAt != 0 && checks != tc.holdsAt {
				t.Fatalf("%d checks, want %d", checks, tc.holdsAt)
			}
			if tc.holdsAt == 0 && time.Since(start) < tc.within {
				t.Fatalf("gave up after %s, before %s", time.Since(start), tc.within)
			}
		})
	}
}
