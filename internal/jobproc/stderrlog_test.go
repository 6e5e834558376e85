package jobproc

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// Lines log/slog's handlers write are read back into the records they
// were; other lines are not records.
func TestParseLogLine(t *testing.T) {
	t.Parallel()
	var text, js bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Warn("text line", "k", "v w", "n", 3)
	slog.New(slog.NewJSONHandler(&js, nil)).Error("json line", "k", "v")
	// What slog.Default() writes through package log's standard flags.
	def := time.Now().Format("2006/01/02 15:04:05") + " INFO default line k=v"
	for _, tc := range []struct {
		line  string
		ok    bool
		level slog.Level
		msg   string
		attrs string
	}{
		{strings.TrimSpace(text.String()), true, slog.LevelWarn, "text line", "k=v w n=3"},
		{strings.TrimSpace(js.String()), true, slog.LevelError, "json line", "k=v"},
		{def, true, slog.LevelInfo, "default line k=v", ""},
		{"plain text from a program", false, 0, "", ""},
		{"panic: boom", false, 0, "", ""},
		{`{"not":"a record"}`, false, 0, "", ""},
		{`time=x level=INFO msg="unterminated`, false, 0, "", ""},
		{"level=LOUD msg=x", false, 0, "", ""},
	} {
		r, ok := parseLogLine(tc.line)
		if ok != tc.ok {
			t.Errorf("parseLogLine(%q) ok = %v, want %v", tc.line, ok, tc.ok)
			continue
		}
		if !ok {
			continue
		}
		var attrs []string
		r.Attrs(func(a slog.Attr) bool {
			attrs = append(attrs, a.Key+"="+a.Value.String())
			return true
		})
		if r.Level != tc.level || r.Message != tc.msg || strings.Join(attrs, " ") != tc.attrs {
			t.Errorf("parseLogLine(%q) = %v %q %v, want %v %q %q", tc.line, r.Level, r.Message, attrs, tc.level, tc.msg, tc.attrs)
		}
	}
}
