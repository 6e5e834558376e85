package jobproc

import (
	"strings"
	"sync"
)

// Bounds of the stderr tail an End carries.
const (
	tailLines = 20
	tailBytes = 4 << 10
	// The crash line and the lines after it (the crashing goroutine's
	// stack, for the Go runtime) are kept apart, within these bounds.
	headLines = 8
	headBytes = 1536
	// A longer line is cut.
	maxLine = 1 << 10
)

// tail keeps the last lines a process wrote to its stderr and the first
// line that looks like the Go runtime ending it, with a few lines after it.
type tail struct {
	mu    sync.Mutex
	lines []string // the last lines, oldest first
	n     int      // lines seen
	head  []string // the crash line and the lines after it
	at    int      // index among the lines seen of the crash line
	hsize int
}

// crashLine says whether line is how the Go runtime announces the end of
// a process: a fatal error, an unrecovered panic, or a signal it could not
// handle (a crash in C code).
func crashLine(line string) bool {
	if strings.HasPrefix(line, "fatal error: ") || strings.HasPrefix(line, "panic: ") {
		return true
	}
	// "SIGSEGV: segmentation violation", "SIGABRT: abort", …
	sig, _, ok := strings.Cut(line, ": ")
	if !ok || len(sig) < 5 || !strings.HasPrefix(sig, "SIG") {
		return false
	}
	for _, c := range sig[3:] {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// add records a line (without its newline) and says whether the process
// has announced a crash.
func (t *tail) add(line string) (crashing bool) {
	if len(line) > maxLine {
		line = line[:maxLine] + "…"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.head == nil && crashLine(line):
		t.head, t.at, t.hsize = []string{line}, t.n, len(line)
	case t.head != nil && len(t.head) < headLines && t.n == t.at+len(t.head) && t.hsize+len(line) <= headBytes:
		t.head = append(t.head, line)
		t.hsize += len(line)
	}
	t.n++
	if len(t.lines) == tailLines {
		copy(t.lines, t.lines[1:])
		t.lines = t.lines[:tailLines-1]
	}
	t.lines = append(t.lines, line)
	return t.head != nil
}

// crash is the first crash line, or "".
func (t *tail) crash() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.head == nil {
		return ""
	}
	return t.head[0]
}

// last is the last non-empty line, or "".
func (t *tail) last() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := len(t.lines) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(t.lines[i]); s != "" {
			return s
		}
	}
	return ""
}

// String is the tail: the last lines within the bounds, led by the crash
// line and the lines after it when they are no longer among them.
func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	first := t.n - len(t.lines) // index of lines[0] among the lines seen
	withHead := t.head != nil && t.at < first
	budgetLines, budgetBytes := tailLines, tailBytes
	if withHead {
		budgetLines -= len(t.head) + 1
		budgetBytes -= t.hsize + len(t.head) + len("…\n")
	}
	// Take the newest lines that fit.
	from := len(t.lines)
	size := 0
	for from > 0 && len(t.lines)-from < budgetLines && size+len(t.lines[from-1])+1 <= budgetBytes {
		from--
		size += len(t.lines[from]) + 1
	}
	var b strings.Builder
	if withHead {
		// The head's lines that are not shown among the last ones.
		i := 0
		for ; i < len(t.head) && t.at+i < first+from; i++ {
			b.WriteString(t.head[i])
			b.WriteByte('\n')
		}
		if t.at+i < first+from {
			b.WriteString("…\n")
		}
	}
	for _, l := range t.lines[from:] {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}
