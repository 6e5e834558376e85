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

func TestHolds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failsAt int // the check at which cond first fails; 0: never
		wantMsg string
	}{
		{name: "throughout", wantMsg: ""},
		{name: "fails at once", failsAt: 1, wantMsg: "the thing no longer held within 300ms"},
		{name: "fails later", failsAt: 2, wantMsg: "the thing no longer held within 300ms"},
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
				Holds(ft, 300*time.Millisecond, "the thing", func() bool {
					checks++
					return checks != tc.failsAt
				})
			}()
			if ft.msg != tc.wantMsg {
				t.Fatalf("failure %q, want %q", ft.msg, tc.wantMsg)
			}
			if tc.failsAt == 0 && time.Since(start) < 300*time.Millisecond {
				t.Fatalf("returned after %s, before the 300ms it should watch", time.Since(start))
			}
		})
	}
}

func TestWithin(t *testing.T) {
	checks := 0
	if !Within(10*time.Second, func() bool { checks++; return checks == 3 }) || checks != 3 {
		t.Fatalf("Within: %d checks, want true at the third", checks)
	}
	start := time.Now()
	if Within(50*time.Millisecond, func() bool { return false }) {
		t.Fatal("Within of a condition that never holds returned true")
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Fatalf("Within gave up after %s, before 50ms", time.Since(start))
	}
}
