package worker

import (
	"errors"
	"testing"
	"time"
)

// emit never waits for a consumer: past EventBuffer, events are dropped
// and counted, and the others keep their order.
func TestEventHubDropsWhenFull(t *testing.T) {
	t.Parallel()
	w, err := newWorker(validOptions(), noop, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	sub := w.Subscribe()
	defer sub.Close()
	const extra = 10
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range EventBuffer + extra {
			w.events.emit(Event{Kind: EventOffered, JobID: string(rune('a' + i%26))})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("emit blocked on a consumer that does not read")
	}
	if got := sub.Dropped(); got != extra {
		t.Errorf("Dropped = %d, want %d", got, extra)
	}
	if got := len(sub.C); got != EventBuffer {
		t.Errorf("%d events buffered, want %d", got, EventBuffer)
	}
}

func TestEventKindString(t *testing.T) {
	t.Parallel()
	for k, want := range map[EventKind]string{EventOffered: "offered", EventDeclined: "declined", EventQueued: "queued",
		EventStarted: "started", EventEnded: "ended", EventRestarted: "restarted", EventRecovered: "recovered", 0: "unknown", 99: "unknown"} {
		if got := k.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(k), got, want)
		}
	}
}

// A job process's end is ErrJobProcessDone; one that could not serve its
// job also wraps why, and exits with ExitFailure.
func TestJobProcessDoneExitCode(t *testing.T) {
	t.Parallel()
	why := errors.New("prewarm failed")
	for _, tc := range []struct {
		err  error
		want int
	}{
		{&jobProcessDone{}, ExitOK},
		{&jobProcessDone{err: why}, ExitFailure},
	} {
		if !errors.Is(tc.err, ErrJobProcessDone) {
			t.Errorf("%v is not ErrJobProcessDone", tc.err)
		}
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if err := (&jobProcessDone{err: why}); !errors.Is(err, why) {
		t.Errorf("%v does not wrap why", err)
	}
}
