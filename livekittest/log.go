package livekittest

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// LoggerOption configures a [Logger].
type LoggerOption func(*slog.HandlerOptions)

// LogLevel sets the lowest level a [Logger] writes; the default is Debug.
// The WebRTC library beneath a worker's rooms logs its chatter at Debug
// through the worker's logger: LogLevel(slog.LevelInfo) keeps a passing
// test's log to what the worker itself says.
func LogLevel(level slog.Leveler) LoggerOption {
	return func(o *slog.HandlerOptions) { o.Level = level }
}

// Logger returns a logger that writes to t's log, from Debug up unless
// [LogLevel] says otherwise, for the Options.Logger of a worker under
// test. What is logged after t ended is dropped: the LiveKit SDK's
// goroutines, and the process-wide logger its WebRTC library logs through
// (which the worker points at its logger), outlive a test, and testing
// allows no log of t then (the race detector reports a logger that writes
// to t.Log regardless).
func Logger(t testing.TB, opts ...LoggerOption) *slog.Logger {
	w := &endingWriter{t: t}
	t.Cleanup(w.end)
	o := &slog.HandlerOptions{Level: slog.LevelDebug}
	for _, opt := range opts {
		opt(o)
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// endingWriter writes each line to t's log until t ends.
type endingWriter struct {
	t     testing.TB
	mu    sync.Mutex
	ended bool
}

func (w *endingWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ended {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func (w *endingWriter) end() {
	w.mu.Lock()
	w.ended = true
	w.mu.Unlock()
}
