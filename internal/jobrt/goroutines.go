package jobrt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
)

// goroutines counts a job's goroutines started with Go. Its fields are
// guarded by Job.mu.
type goroutines struct {
	running int           // started and not yet returned
	idle    chan struct{} // closed when running drops to 0; nil while 0
	closed  bool          // the job's end is waiting for them: Go starts no more
	failed  error         // the first failure, which fails the job
}

// Go runs fn on a goroutine owned by the job, with the job's context.
//
// A panic in fn, or a non-nil error it returns other than one caused by
// the job's context ending, fails the job: the job's context is cancelled
// with the failure as its cause (a *PanicError carrying the stack, or the
// error wrapped), so the handler returns, and the job is reported failed
// with it even if the handler returns nil. The job's end waits for fn to
// return, for at most the runtime's shutdown timeout; fn should return soon
// after ctx is done. Go after the job's end has begun does not run fn.
func (j *Job) Go(fn func(ctx context.Context) error) {
	j.goNamed("job goroutine", fn)
}

// goNamed is Go, with what to call fn in failures.
func (j *Job) goNamed(what string, fn func(ctx context.Context) error) {
	j.mu.Lock()
	if j.goroutines.closed {
		j.mu.Unlock()
		j.log.Warn(what + " not started: the job has ended")
		return
	}
	if j.goroutines.running == 0 {
		j.goroutines.idle = make(chan struct{})
	}
	j.goroutines.running++
	j.mu.Unlock()
	go func() {
		defer j.goReturned()
		defer func() {
			if r := recover(); r != nil {
				j.fail(&PanicError{Value: r, Stack: debug.Stack(), Where: what})
			}
		}()
		if err := fn(j.ctx); err != nil && !causedByEnd(j.ctx, err) {
			j.fail(fmt.Errorf("%s failed: %w", what, err))
		}
	}()
}

// goReturned counts a goroutine started with Go as returned.
func (j *Job) goReturned() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.goroutines.running--
	if j.goroutines.running == 0 {
		close(j.goroutines.idle)
		j.goroutines.idle = nil
	}
}

// causedByEnd reports whether err only says that ctx ended.
func causedByEnd(ctx context.Context, err error) bool {
	if ctx.Err() == nil {
		return false
	}
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Cause(ctx))
}

// fail records err as the job's failure and cancels the job's context with
// it (a context already cancelled keeps its first cause).
func (j *Job) fail(err error) {
	j.mu.Lock()
	if j.goroutines.failed == nil {
		j.goroutines.failed = err
	}
	j.mu.Unlock()
	if pe, ok := errors.AsType[*PanicError](err); ok {
		j.log.Error(pe.Where+" panicked; the job fails", slog.Any("panic", pe.Value), slog.String("stack", string(pe.Stack)))
	} else {
		j.log.Error("the job fails", slog.Any("error", err))
	}
	j.cancel(err)
}

// failure returns the first failure recorded by fail, or nil.
func (j *Job) failure() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.goroutines.failed
}

// withFailure is outcome, or the job's failure if outcome is nil.
func (j *Job) withFailure(outcome error) error {
	if outcome != nil {
		return outcome
	}
	return j.failure()
}

// waitGoroutines stops Go from starting goroutines and waits until those
// running returned, or ctx ends.
func (j *Job) waitGoroutines(ctx context.Context) {
	j.mu.Lock()
	j.goroutines.closed = true
	idle := j.goroutines.idle
	j.mu.Unlock()
	if idle == nil {
		return
	}
	select {
	case <-idle:
	case <-ctx.Done():
		j.mu.Lock()
		n := j.goroutines.running
		j.mu.Unlock()
		j.log.Warn("goroutines started with Go still run after the shutdown timeout; the job ends without them",
			slog.Int("goroutines", n))
	}
}
