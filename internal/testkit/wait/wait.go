// Package wait is the one polling loop of the project's tests: [Until]
// waits for a condition that has no event to wait on, and fails the test,
// naming what it waited for, if it does not hold in time. Package
// livekittest offers it to users as livekittest.Eventually.
package wait

import (
	"testing"
	"time"
)

// The interval between checks starts short, so that a condition that holds
// soon is seen soon, and grows to maxInterval, so that a long wait on a
// condition that asks a server does not flood it.
const (
	minInterval = 5 * time.Millisecond
	maxInterval = 100 * time.Millisecond
)

// Until checks cond until it returns true, and fails t if it has not
// within d. cond runs on the caller's goroutine and should be quick.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for interval := minInterval; !cond(); interval = min(2*interval, maxInterval) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, d)
		}
		time.Sleep(interval)
	}
}
