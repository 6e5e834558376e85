package faultproxy

import (
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		first string
		want  Kind
	}{
		{"GET /agent HTTP/1.1\r\n", KindAgent},
		{"GET /agent?protocol=15 HTTP/1.1\r\nHost: x\r\n\r\n", KindAgent},
		{"GET /some/prefix/agent HTTP/1.1\r\n", KindAgent},
		{"GET http://127.0.0.1:7880/agent HTTP/1.1\r\n", KindAgent},
		{"GET /agent HTTP/1.1\n", KindAgent},
		{"GET /rtc HTTP/1.1\r\n", KindRoom},
		{"GET /rtc?access_token=abc&auto_subscribe=1 HTTP/1.1\r\n", KindRoom},
		{"GET /rtc/v1?join_request=x HTTP/1.1\r\n", KindRoom},
		{"GET /rtc/validate HTTP/1.1\r\n", KindRoom},
		{"GET ws://host/rtc/v1 HTTP/1.1\r\n", KindRoom},
		{"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\n", KindOther},
		{"GET /agents HTTP/1.1\r\n", KindOther},
		{"GET /agent/x HTTP/1.1\r\n", KindOther},
		{"GET / HTTP/1.1\r\n", KindOther},
		{"GET /agent#frag HTTP/1.1\r\n", KindAgent},
		{"GET /agent", KindOther},                   // no end of line
		{"GET /agent\r\n", KindOther},               // no protocol
		{"GET /agent SPDY/3\r\n", KindOther},        // not HTTP
		{"G(T /agent HTTP/1.1\r\n", KindOther},      // method is not a token
		{" /agent HTTP/1.1\r\n", KindOther},         // no method
		{"GET host/agent HTTP/1.1\r\n", KindOther},  // neither origin nor absolute form
		{"GET http://host HTTP/1.1\r\n", KindOther}, // absolute form without a path
		{"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", KindOther},
		{"", KindOther},
	}
	for _, tc := range cases {
		if got := classify([]byte(tc.first)); got != tc.want {
			t.Errorf("classify(%q) = %v, want %v", tc.first, got, tc.want)
		}
	}
}

func TestHeadScanner(t *testing.T) {
	stream := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x82\x02hi"
	headLen := strings.Index(stream, "\r\n\r\n") + 4
	// Split the stream in two at every position: the end of the head is
	// found at the same place.
	for cut := 0; cut <= len(stream); cut++ {
		var h headScanner
		end := -1
		if off := h.feed([]byte(stream[:cut])); off >= 0 {
			end = off
		} else if off := h.feed([]byte(stream[cut:])); off >= 0 {
			end = cut + off
		}
		if end != headLen {
			t.Fatalf("split at %d: head ends at %d, want %d", cut, end, headLen)
		}
		if code := h.status(); code != 101 {
			t.Fatalf("split at %d: status %d", cut, code)
		}
		if off := h.feed([]byte("\r\n\r\n")); off != -1 {
			t.Fatalf("feed after the head: %d", off)
		}
	}
	// Byte by byte.
	var h headScanner
	for i := range len(stream) {
		if off := h.feed([]byte{stream[i]}); off >= 0 {
			if i+1 != headLen || off != 1 {
				t.Fatalf("byte by byte: head ended at byte %d (offset %d), want %d", i+1, off, headLen)
			}
		}
	}
}

func TestHeadScannerGivesUp(t *testing.T) {
	var h headScanner
	chunk := []byte(strings.Repeat("x", 4096))
	for range maxHead/len(chunk) + 1 {
		h.feed(chunk)
	}
	if h.state != headGaveUp {
		t.Fatalf("state %d after %d bytes without an end of head", h.state, maxHead+len(chunk))
	}
	if off := h.feed([]byte("\r\n\r\n")); off != -1 {
		t.Fatalf("feed after giving up: %d", off)
	}
}

func TestStatus(t *testing.T) {
	for head, want := range map[string]int{
		"HTTP/1.1 101 Switching Protocols\r\n\r\n": 101,
		"HTTP/1.1 101\r\n\r\n":                     101,
		"HTTP/1.0 401 Unauthorized\r\n\r\n":        401,
		"HTTP/1.1 100 Continue\r\n\r\n":            100,
		"HTTP/1.1 1010 Nope\r\n\r\n":               0,
		"HTTP/1.1 1x1 Nope\r\n\r\n":                0,
		"HTTP/2 101 Nope\r\n\r\n":                  0,
		"SSH-2.0-OpenSSH\r\n\r\n":                  0,
	} {
		h := headScanner{head: []byte(head)}
		if got := h.status(); got != want {
			t.Errorf("status(%q) = %d, want %d", head, got, want)
		}
	}
}
