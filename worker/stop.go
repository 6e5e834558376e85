package worker

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/lkagent/lkagent/job"
)

// stopRequests merges the stop requests of one run. Any request may come
// at any time, from any goroutine, and each one can only make the stop
// harder or sooner: the drain ends when the first request's context ends
// or when any request cancels at once, whatever came before it. Its
// fields are set in newStopRequests and read-only afterwards (the
// contexts and the atomic flag synchronize themselves), so the run's
// shutdown reads them without a lock while requests arrive.
type stopRequests struct {
	requested chan struct{} // closed by the first request
	once      sync.Once
	// drain ends when a Stop's context ends (its cause is that
	// context's) or when StopAndCancel is called (job.ErrWorkerStopped).
	drain    context.Context
	endDrain context.CancelCauseFunc
	// handlers ends when a StopAndCancel's context ends: the wait for
	// cancelled handlers ends with it.
	handlers    context.Context
	endHandlers context.CancelCauseFunc
	now         atomic.Bool // some request cancels at once
}

func newStopRequests() *stopRequests {
	s := &stopRequests{requested: make(chan struct{})}
	s.drain, s.endDrain = context.WithCancelCause(context.Background())
	s.handlers, s.endHandlers = context.WithCancelCause(context.Background())
	return s
}

// add records a request: drain until ctx ends, or cancel at once (now).
// The returned func releases ctx; call it once the run ended.
func (s *stopRequests) add(ctx context.Context, now bool) (release func()) {
	if now {
		// now is set before the drain ends: whoever sees the drain end
		// also sees why.
		s.now.Store(true)
		s.endDrain(job.ErrWorkerStopped)
	}
	stopAfter := context.AfterFunc(ctx, func() {
		s.endDrain(context.Cause(ctx))
		if now {
			s.endHandlers(context.Cause(ctx))
		}
	})
	s.once.Do(func() { close(s.requested) })
	return func() { stopAfter() }
}

// cancelNow reports whether some request asked to cancel at once.
func (s *stopRequests) cancelNow() bool { return s.now.Load() }

// release frees the contexts once the run ended.
func (s *stopRequests) release() {
	s.endDrain(context.Canceled)
	s.endHandlers(context.Canceled)
}
