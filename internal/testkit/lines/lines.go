// Package lines turns a stream of writes (a child process's output) into
// whole lines.
package lines

import (
	"bytes"
	"strings"
)

// Splitter collects what is written to it and hands out each complete
// line. A line longer than the splitter's maximum is cut to it. It is not
// safe for concurrent use: its owner serialises the calls.
type Splitter struct {
	max     int
	partial []byte // the incomplete last line
}

// NewSplitter returns a Splitter that keeps at most max bytes of a line.
func NewSplitter(max int) *Splitter { return &Splitter{max: max} }

// Split adds b and calls line with each line it completes, in order,
// without its newline.
func (s *Splitter) Split(b []byte, line func(string)) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		end := i
		if i < 0 {
			end = len(b)
		}
		if room := s.max - len(s.partial); room > 0 {
			s.partial = append(s.partial, b[:min(room, end)]...)
		}
		if i < 0 {
			return
		}
		line(string(s.partial))
		s.partial = s.partial[:0]
		b = b[i+1:]
	}
}

// Partial is the incomplete last line, without a newline yet.
func (s *Splitter) Partial() []byte { return s.partial }

// Ring keeps the last lines added to it. It is not safe for concurrent
// use.
type Ring struct {
	lines []string
	next  int  // index of the next line to write
	full  bool // whether lines has wrapped
}

// NewRing returns a Ring that keeps the last n lines (n > 0).
func NewRing(n int) *Ring { return &Ring{lines: make([]string, n)} }

// Add adds a line, dropping the oldest when the ring is full.
func (r *Ring) Add(line string) {
	r.lines[r.next] = line
	r.next = (r.next + 1) % len(r.lines)
	if r.next == 0 {
		r.full = true
	}
}

// String returns the lines, oldest first, each ended by a newline, and
// then partial (an incomplete last line, as Splitter.Partial gives it)
// with a newline, if there is one.
func (r *Ring) String(partial []byte) string {
	var sb strings.Builder
	if r.full {
		for _, s := range r.lines[r.next:] {
			sb.WriteString(s)
			sb.WriteByte('\n')
		}
	}
	for _, s := range r.lines[:r.next] {
		sb.WriteString(s)
		sb.WriteByte('\n')
	}
	if len(partial) > 0 {
		sb.Write(partial)
		sb.WriteByte('\n')
	}
	return sb.String()
}
