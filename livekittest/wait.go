package livekittest

import (
	"testing"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/wait"
)

// Eventually checks cond until it returns true, and fails the test if it
// has not within d ([Timeout] if d is 0), naming what it waited for. It is
// for states that have no event to wait on, such as the jobs a worker's
// Snapshot lists or the participants the server lists. cond runs on the
// test's goroutine and should be quick; checks start a few milliseconds
// apart and slow down to one every 100 ms.
//
//	livekittest.Eventually(t, 0, "the job's end", func() bool { return len(w.Snapshot().Jobs) == 0 })
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if d == 0 {
		d = Timeout
	}
	wait.Until(t, d, what, cond)
}
