package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// ErrInterrupted: a second signal cut a drain short; RunUntilSignal
// cancelled the running jobs (with job.ErrWorkerStopped) and reported
// their final statuses before it returned.
var ErrInterrupted = errors.New("interrupted: a second signal cancelled the running jobs")

// SignalError is what [Worker.RunUntilSignal] returns when a second signal
// cut the drain short. It wraps ErrInterrupted.
type SignalError struct {
	Signal os.Signal // the second signal
}

func (e *SignalError) Error() string {
	return fmt.Sprintf("worker: %s: %v", e.Signal, ErrInterrupted)
}

func (e *SignalError) Unwrap() error { return ErrInterrupted }

// Exit codes of a program that runs a worker, as [ExitCode] maps them;
// the lkagent command uses the same.
const (
	ExitOK          = 0   // stopped cleanly: drained after a signal, or ctx ended
	ExitFailure     = 1   // the worker stopped on its own: ErrUnauthorized, ErrMisconfigured, ErrGaveUp, …
	ExitUsage       = 2   // bad options (an *OptionError from New): nothing was done
	ExitInterrupted = 130 // a second signal cancelled the running jobs
)

// ExitCode maps what [New] or [Worker.RunUntilSignal] returned to the
// exit code of the program: ExitOK for nil, ExitUsage for an
// *OptionError, ExitInterrupted for ErrInterrupted, else ExitFailure. In
// a job process ([ErrJobProcessDone]) it is ExitOK when the process
// served its job, else ExitFailure.
func ExitCode(err error) int {
	var oe *OptionError
	var jp *jobProcessDone
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrJobProcessDone):
		if errors.As(err, &jp) && jp.err != nil {
			return ExitFailure // it could not serve its job
		}
		return ExitOK
	case errors.As(err, &oe):
		return ExitUsage
	case errors.Is(err, ErrInterrupted):
		return ExitInterrupted
	}
	return ExitFailure
}

// RunUntilSignal is [Worker.Run] for a program's main: it runs the worker
// until ctx ends or the process receives one of signals (SIGINT and
// SIGTERM when none are given), then drains: no new jobs, running and
// queued ones may finish within DrainTimeout. A second signal during the
// drain cancels the running jobs at once ([Worker.StopAndCancel]): their
// handlers get up to ShutdownTimeout to return, and their final statuses
// are sent before RunUntilSignal returns, so the server records each
// job's end. Exiting the process from a signal handler instead would
// skip those statuses.
//
// ctx ending drains as well, as in Run, but counts as no signal: the
// first signal after it still only drains, the second cancels.
//
// It returns nil after a drain, a *SignalError (wrapping ErrInterrupted)
// when a second signal cut the drain short, or what Run returns when the
// worker stopped on its own; in a job process ([Processes]),
// [ErrJobProcessDone] once it served its job. [ExitCode] maps the result
// to an exit code:
//
//	func main() {
//		w, err := worker.New(opts, handle)
//		if err == nil {
//			err = w.RunUntilSignal(context.Background())
//		}
//		if err != nil && !errors.Is(err, worker.ErrJobProcessDone) {
//			fmt.Fprintln(os.Stderr, err)
//		}
//		os.Exit(worker.ExitCode(err))
//	}
//
// The signals are delivered to RunUntilSignal only while it runs
// (signal.Notify, then signal.Stop).
func (w *Worker) RunUntilSignal(ctx context.Context, signals ...os.Signal) error {
	if len(signals) == 0 {
		signals = []os.Signal{os.Interrupt, syscall.SIGTERM}
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, signals...)
	defer signal.Stop(sigs)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	returned := make(chan struct{}) // Run returned
	interrupted := make(chan os.Signal, 1)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		// Signals are counted on their own: ctx ending drains too, but
		// is no signal (it may end because of the very signal that is
		// still on its way here).
		select {
		case s := <-sigs:
			w.log.Info("signal received: draining; a second signal cancels the running jobs",
				slog.String("signal", s.String()), slog.Duration("drain_timeout", w.o.DrainTimeout))
			cancel()
		case <-returned:
			return
		}
		select {
		case s := <-sigs:
			w.log.Warn("second signal: cancelling the running jobs", slog.String("signal", s.String()))
			interrupted <- s
			_ = w.StopAndCancel(context.Background())
		case <-returned:
		}
	}()
	err := w.Run(runCtx)
	close(returned)
	<-watched
	select {
	case s := <-interrupted:
		if err == nil {
			err = &SignalError{Signal: s}
		}
	default:
	}
	return err
}
