package worker

import (
	"errors"
	"fmt"
)

// Version is this runtime's version, reported to the server.
const Version = "0.1.0"

// Errors Run returns, for callers that branch on them.
var (
	// ErrUnauthorized: the server rejected the API key or secret. Not retried.
	ErrUnauthorized = errors.New("API key/secret rejected by the LiveKit server (HTTP 401): check the key and secret")
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
	// ErrRegistrationRefused: the server closed the connection instead of
	// answering the registration.
	ErrRegistrationRefused = errors.New("registration refused by the server")
)

// gaveUpError wraps the last error once MaxRetry is spent.
type gaveUpError struct {
	attempts int
	last     error
}

func (e *gaveUpError) Error() string {
	return fmt.Sprintf("worker: %s after %d failed attempts: %v", ErrGaveUp, e.attempts, e.last)
}

func (e *gaveUpError) Unwrap() []error { return []error{ErrGaveUp, e.last} }

// fatalError marks an error that reconnecting cannot fix.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }
