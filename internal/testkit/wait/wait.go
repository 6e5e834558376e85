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

// Holds checks cond until d has passed and fails t the first time it does
// not hold: the absence check ("nothing more happens for d") for state
// that has no event to wait on.
func Holds(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.NewTimer(d)
	defer end.Stop()
	tick := time.NewTicker(maxInterval)
	defer tick.Stop()
	for {
		if !cond() {
			t.Fatalf("%s no longer held within %s", what, d)
		}
		select {
		case <-end.C:
			if !cond() {
				t.Fatalf("%s no longer held at the end of %s", what, d)
			}
			return
		case <-tick.C:
		}
	}
}

// Within reports whether cond holds within d, checking it as Until does:
// for a caller that words the failure itself, or goes on when cond does
// not hold (a cleanup), or, failing on true, checks an absence over d.
func Within(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for interval := minInterval; !cond(); interval = min(2*interval, maxInterval) {
		if time.Now().After(deadline) {
			return cond()
		}
		time.Sleep(interval)
	}
	return true
}
