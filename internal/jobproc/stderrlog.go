package jobproc

import (
	"encoding/json"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// A job process is the program started again: what it logs before it
// builds its worker (and hands its logger to the job) goes to its stderr,
// written by log/slog's handlers. parseLogLine reads such a line back into
// a record, so that it reaches the parent's logger as the record it was,
// not as a line of text: the default logger's "2006/01/02 15:04:05 LEVEL
// msg k=v", slog.TextHandler's "time=… level=… msg=… k=v" and
// slog.JSONHandler's objects.

// defaultLine is log/slog's default logger through package log: date and
// time (with microseconds if so configured), level, then the message and
// attributes, which cannot be told apart: all of it is the message.
var defaultLine = regexp.MustCompile(`^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)? (DEBUG|INFO|WARN|ERROR)(?:[+-]\d+)? (.*)$`)

// parseLogLine returns the record line holds, or false when it is no
// line of slog's.
func parseLogLine(line string) (slog.Record, bool) {
	switch {
	case strings.HasPrefix(line, "{"):
		return parseJSONLine(line)
	case strings.HasPrefix(line, "time=") || strings.HasPrefix(line, "level="):
		return parseTextLine(line)
	}
	m := defaultLine.FindStringSubmatch(line)
	if m == nil {
		return slog.Record{}, false
	}
	level, ok := parseLevel(m[1])
	if !ok {
		return slog.Record{}, false
	}
	return slog.NewRecord(time.Now(), level, m[2], 0), true
}

func parseLevel(s string) (slog.Level, bool) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, false
	}
	return l, true
}

func parseJSONLine(line string) (slog.Record, bool) {
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		return slog.Record{}, false
	}
	lv, _ := m[slog.LevelKey].(string)
	msg, hasMsg := m[slog.MessageKey].(string)
	level, ok := parseLevel(lv)
	if !ok || !hasMsg {
		return slog.Record{}, false
	}
	r := slog.NewRecord(parseTime(m[slog.TimeKey]), level, msg, 0)
	for k, v := range m {
		switch k {
		case slog.TimeKey, slog.LevelKey, slog.MessageKey:
			continue
		}
		r.AddAttrs(slog.Any(k, v))
	}
	return r, true
}

func parseTime(v any) time.Time {
	if s, ok := v.(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t
		}
	}
	return time.Now()
}

// parseTextLine reads slog.TextHandler's key=value pairs; values are bare
// or quoted as strconv.Quote does.
func parseTextLine(line string) (slog.Record, bool) {
	var (
		t     = time.Now()
		level slog.Level
		msg   string
		have  int
		attrs []slog.Attr
	)
	for rest := line; rest != ""; {
		rest = strings.TrimLeft(rest, " ")
		k, after, ok := strings.Cut(rest, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \"") {
			return slog.Record{}, false
		}
		var v string
		if strings.HasPrefix(after, `"`) {
			q, err := strconv.QuotedPrefix(after)
			if err != nil {
				return slog.Record{}, false
			}
			v, _ = strconv.Unquote(q)
			rest = after[len(q):]
		} else {
			v, rest, _ = strings.Cut(after, " ")
		}
		switch k {
		case slog.TimeKey:
			t = parseTime(v)
		case slog.LevelKey:
			l, ok := parseLevel(v)
			if !ok {
				return slog.Record{}, false
			}
			level, have = l, have+1
		case slog.MessageKey:
			msg, have = v, have+1
		default:
			attrs = append(attrs, slog.String(k, v))
		}
	}
	if have != 2 {
		return slog.Record{}, false
	}
	r := slog.NewRecord(t, level, msg, 0)
	r.AddAttrs(attrs...)
	return r, true
}
