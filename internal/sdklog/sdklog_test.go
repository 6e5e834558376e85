package sdklog

import (
	"bytes"
	"errors"
	"log"
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

// Until a logger is installed, the SDK's lines go where the SDK writes
// them by default: the standard library's logger.
func TestForwarderWritesWhereTheSDKDidUntilInstalled(t *testing.T) {
	var buf bytes.Buffer
	out := log.Writer()
	log.SetOutput(&buf)
	defer log.SetOutput(out)
	var f forwarder
	f.WithName("pion").Warnw("before any worker", nil)
	if !strings.Contains(buf.String(), "before any worker") {
		t.Fatalf("the standard logger got %q", buf.String())
	}
}

// The warnings pion logs on healthy connections are Debug; the
// same words from another logger, and pion's other warnings, stay Warn.
func TestRoutinePionWarningsAreDebug(t *testing.T) {
	for _, tc := range []struct {
		name, msg string
		want      slog.Level
	}{
		{"pion.ice", "Failed to ping without candidate pairs. Connection is not possible yet.", slog.LevelDebug},
		{"pion.sctp", "[0x3f1c14dff188] failed to write packets on netConn: dtls fatal: conn is closed", slog.LevelDebug},
		{"pion.mux", "Warning: mux: no endpoint for packet starting with 21, adding to queue size(0)", slog.LevelDebug},
		{"pion.ice", "Failed to discover mDNS candidate", slog.LevelWarn},
		{"pion.mux", "Warning: mux: queue full, dropping packet", slog.LevelWarn},
		{"pion.sctp", "[0x3f1c14dff188] failed to write packets on netConn: i/o timeout", slog.LevelWarn},
		{"room", "Failed to ping without candidate pairs. Connection is not possible yet.", slog.LevelWarn},
		{"pion.dtls", "dtls fatal: conn is closed", slog.LevelWarn},
	} {
		var buf bytes.Buffer
		l := New(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: LevelTrace})))
		for _, part := range strings.Split(tc.name, ".") {
			l = l.WithName(part)
		}
		l.Warnw(tc.msg, nil)
		if want := `"level":"` + tc.want.String() + `"`; !strings.Contains(buf.String(), want) {
			t.Errorf("%s %q: logged %s, want level %s", tc.name, tc.msg, strings.TrimSpace(buf.String()), tc.want)
		}
	}
}
