package faultproxy

import (
	"bytes"
	"strings"
)

var crlfcrlf = []byte("\r\n\r\n")

// classify returns the kind of a connection whose client sent first the
// bytes b: the path of an HTTP request line decides.
func classify(b []byte) Kind {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return KindOther
	}
	line := strings.TrimSuffix(string(b[:i]), "\r")
	method, rest, ok := strings.Cut(line, " ")
	if !ok || !isToken(method) {
		return KindOther
	}
	target, proto, ok := strings.Cut(rest, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/") {
		return KindOther
	}
	path := target
	if j := strings.IndexAny(path, "?#"); j >= 0 {
		path = path[:j]
	}
	if !strings.HasPrefix(path, "/") {
		// Absolute form: scheme://authority/path.
		_, after, ok := strings.Cut(path, "://")
		if !ok {
			return KindOther
		}
		j := strings.IndexByte(after, '/')
		if j < 0 {
			return KindOther
		}
		path = after[j:]
	}
	switch {
	case strings.HasSuffix(path, "/agent"):
		return KindAgent
	case strings.HasPrefix(path, "/rtc"):
		return KindRoom
	}
	return KindOther
}

// isToken reports whether s is a non-empty HTTP token (as a method is).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

const (
	headScanning = iota
	headDone
	headGaveUp
)

// maxHead bounds the size of an HTTP head the scanner accumulates.
const maxHead = 64 << 10

// headScanner finds the end of an HTTP message head ("\r\n\r\n") in a
// stream fed in pieces.
type headScanner struct {
	state int
	head  []byte
}

// feed consumes p and returns the offset in p just past the end of the
// head, or -1 if the head does not end in p (or scanning gave up because
// the head is too long). Once the head has ended, feed returns -1.
func (h *headScanner) feed(p []byte) int {
	if h.state != headScanning {
		return -1
	}
	old := len(h.head)
	h.head = append(h.head, p...)
	from := max(old-3, 0)
	if i := bytes.Index(h.head[from:], crlfcrlf); i >= 0 {
		end := from + i + len(crlfcrlf)
		h.head = h.head[:end]
		h.state = headDone
		return end - old
	}
	if len(h.head) > maxHead {
		h.state = headGaveUp
		h.head = nil
	}
	return -1
}

// status returns the status code of the response head scanned, or 0 if
// it does not start with an HTTP/1.x status line.
func (h *headScanner) status() int {
	line := h.head
	if i := bytes.Index(line, []byte("\r\n")); i >= 0 {
		line = line[:i]
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0
	}
	if len(line) > 12 && line[12] != ' ' {
		return 0
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0
		}
		code = code*10 + int(c-'0')
	}
	return code
}

// reset makes the scanner look for the next head.
func (h *headScanner) reset() {
	h.state = headScanning
	h.head = h.head[:0]
}
