package lkurl

import (
	"strings"
	"testing"
)

func TestProblem(t *testing.T) {
	const secret = "pa55-s3cret"
	for _, tc := range []struct {
		raw, shown, problem string
	}{
		{"ws://127.0.0.1:7880", "ws://127.0.0.1:7880", ""},
		{"https://lk.example.com/base", "https://lk.example.com/base", ""},
		{"lk.example.com:7880", "lk.example.com:7880", "has no scheme"},
		{"user:" + secret + "@lk.example.com", "lk.example.com", "has no scheme"},
		{"ftp://lk.example.com", "ftp://lk.example.com", "scheme must be"},
		{"ws://", "ws:", "has no host"},
		{"ws://user:" + secret + "@lk.example.com", "ws://lk.example.com", "user or password"},
		{"wss://lk.example.com/?token=" + secret, "wss://lk.example.com/", "query"},
		{"ws://[::1", "", "not a URL"},
		{"HTTP://lk.example.com", "http://lk.example.com", ""},
		{"WSS://lk.example.com:443", "wss://lk.example.com:443", ""},
		{"Ws://127.0.0.1:7880", "ws://127.0.0.1:7880", ""},
		{"FTP://lk.example.com", "ftp://lk.example.com", "scheme must be"},
	} {
		shown, problem := Problem(tc.raw)
		if shown != tc.shown || !strings.Contains(problem, tc.problem) || (tc.problem == "") != (problem == "") {
			t.Errorf("Problem(%q) = %q, %q; want %q and a problem saying %q", tc.raw, shown, problem, tc.shown, tc.problem)
		}
		if strings.Contains(shown+problem, secret) {
			t.Errorf("Problem(%q) shows the secret", tc.raw)
		}
	}
}

func TestConversions(t *testing.T) {
	for _, tc := range []struct{ in, ws, http string }{
		{"ws://h:1", "ws://h:1", "http://h:1"},
		{"wss://h", "wss://h", "https://h"},
		{"http://h", "ws://h", "http://h"},
		{"https://h/p", "wss://h/p", "https://h/p"},
		{"HTTP://h:1", "ws://h:1", "http://h:1"},
		{"HTTPS://h/P", "wss://h/P", "https://h/P"},
		{"WS://H:1", "ws://H:1", "http://H:1"},
		{"WsS://h", "wss://h", "https://h"},
		{"ftp://h", "ftp://h", "ftp://h"},
		{"h:7880", "h:7880", "h:7880"},
	} {
		if got := WS(tc.in); got != tc.ws {
			t.Errorf("WS(%q) = %q, want %q", tc.in, got, tc.ws)
		}
		if got := HTTP(tc.in); got != tc.http {
			t.Errorf("HTTP(%q) = %q, want %q", tc.in, got, tc.http)
		}
	}
}
