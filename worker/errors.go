package worker

import (
	"errors"
	"fmt"
)

// Version is this runtime's version, reported to the server.
const Version = "0.1.0"

// Errors Run returns, for callers that branch on them.
var (
	// ErrUnauthorized: the server rejected the API key or secret (HTTP 401
	// or 403). Not retried.
	ErrUnauthorized = errors.New("API key/secret rejected by the LiveKit server: check the key and secret")
	// ErrMisconfigured: the URL is no LiveKit agent endpoint (HTTP 404 or
	// another answer than an upgrade, TLS spoken to a plain server or the
	// reverse, a certificate that does not verify). Not retried; the
	// error says what to fix.
	ErrMisconfigured = errors.New("the URL is not a LiveKit server's agent endpoint")
	// ErrGaveUp: MaxRetry reconnect attempts in a row failed. It wraps the
	// last attempt's error.
	ErrGaveUp = errors.New("gave up reconnecting")
	// ErrAlreadyRunning: Run was called while a Run of the same worker is
	// in progress.
	ErrAlreadyRunning = errors.New("worker is already running")
	// ErrPongTimeout: the server stopped answering pings.
	ErrPongTimeout = errors.New("no pong from the server in time")
	// ErrGoAway: the server asked the worker to re-register elsewhere.
	ErrGoAway = errors.New("server is draining this connection (go away)")
	// ErrRegistrationRefused: the server refused the connection: it closed
	// it with a refusing close code (policy violation, protocol error, …)
	// or answered the upgrade with HTTP 429 or 503. Retried with backoff;
	// it counts toward MaxRetry. (LiveKit's server refuses an invalid
	// registration by closing the socket without a word, which looks like
	// a lost connection; the worker validates its registration itself.)
	ErrRegistrationRefused = errors.New("connection refused by the server")
)

// ErrJobProcessDone is what [Worker.Start], [Worker.Run] and
// [Worker.RunUntilSignal] return in a job process (see [Processes]): the
// process served the one job it was handed, and the program's main should
// now exit, with [ExitCode]'s code for the error (ExitOK when the job
// process served its job, ExitFailure when it could not, for example
// because Options.Prewarm failed; the error then wraps why). The worker
// has already reported the job's end to its parent, and logged a failure:
// a program need not print this error.
//
//	err := w.RunUntilSignal(ctx)
//	if err != nil && !errors.Is(err, worker.ErrJobProcessDone) {
//		fmt.Fprintln(os.Stderr, err)
//	}
//	os.Exit(worker.ExitCode(err))
var ErrJobProcessDone = errors.New("worker: job process done")

// jobProcessDone is the end of a job process: it is ErrJobProcessDone,
// and wraps why the process could not serve its job, if it could not.
type jobProcessDone struct{ err error }

func (e *jobProcessDone) Error() string {
	if e.err == nil {
		return ErrJobProcessDone.Error()
	}
	return fmt.Sprintf("%v: %v", ErrJobProcessDone, e.err)
}

func (e *jobProcessDone) Is(target error) bool { return target == ErrJobProcessDone }
func (e *jobProcessDone) Unwrap() error        { return e.err }

// gaveUpError wraps the last error once MaxRetry is spent.
type gaveUpError struct {
	attempts int
	last     error
}

func (e *gaveUpError) Error() string {
	return fmt.Sprintf("worker: %s after %d failed attempts: %v", ErrGaveUp, e.attempts, e.last)
}

func (e *gaveUpError) Unwrap() []error { return []error{ErrGaveUp, e.last} }
