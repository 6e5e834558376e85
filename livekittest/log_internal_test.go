package livekittest

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// recorder is a testing.TB that keeps what is logged.
type recorder struct {
	testing.TB
	mu    sync.Mutex
	lines []string
}

func (r *recorder) Log(args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range args {
		r.lines = append(r.lines, a.(string))
	}
}

func TestLoggerLevel(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []LoggerOption
		want []string
	}{
		{"default: from Debug", nil, []string{"level=DEBUG", "level=INFO", "level=WARN"}},
		{"Info", []LoggerOption{LogLevel(slog.LevelInfo)}, []string{"level=INFO", "level=WARN"}},
		{"Warn", []LoggerOption{LogLevel(slog.LevelWarn)}, []string{"level=WARN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{TB: t}
			l := Logger(r, tc.opts...)
			l.Debug("d")
			l.Info("i")
			l.Warn("w")
			if len(r.lines) != len(tc.want) {
				t.Fatalf("lines %q, want %d", r.lines, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(r.lines[i], w) {
					t.Errorf("line %d = %q, want %s", i, r.lines[i], w)
				}
			}
		})
	}
}
