package sdklog

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestLevelsAndAttributes(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: LevelTrace})))
	l = l.WithName("room").WithValues("room", "r1")
	l.Debugw("ice candidate", "n", 1)
	l.Infow("connected")
	l.Warnw("reconnecting", errors.New("signal closed"))
	l.Errorw("failed", errors.New("boom"), "attempt", 3)
	l.WithUnlikelyValues("x", 1).Infow("unlikely")
	out := buf.String()
	for _, want := range []string{
		`level=DEBUG-4 msg="ice candidate" room=r1 n=1 sdk=room`,
		`level=DEBUG msg=connected room=r1 sdk=room`,
		`level=WARN msg=reconnecting room=r1 error="signal closed" sdk=room`,
		`level=ERROR msg=failed room=r1 attempt=3 error=boom sdk=room`,
		`msg=unlikely`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// At the usual Info level, only the SDK's warnings and errors come through.
func TestInfoLevelKeepsOnlyWarnings(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)))
	l.Debugw("a")
	l.Infow("b")
	l.Warnw("c", nil)
	if got := strings.Count(buf.String(), "\n"); got != 1 || !strings.Contains(buf.String(), "msg=c") {
		t.Fatalf("lines at Info level:\n%s", buf.String())
	}
}

// Install points the SDK's process-wide logger at the last installed
// logger; switching is safe while the SDK logs.
func TestInstallForwardsToTheLastLogger(t *testing.T) {
	var a, b bytes.Buffer
	Install(slog.New(slog.NewTextHandler(&a, nil)))
	forward.Warnw("to a", nil)
	Install(slog.New(slog.NewTextHandler(&b, nil)))
	forward.WithName("pion").Warnw("to b", nil)
	if !strings.Contains(a.String(), "to a") || strings.Contains(a.String(), "to b") || !strings.Contains(b.String(), "msg=\"to b\" sdk=pion") {
		t.Fatalf("a:\n%s\nb:\n%s", a.String(), b.String())
	}
}
