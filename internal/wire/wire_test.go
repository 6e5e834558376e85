package wire

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/livekit"
)

// patience bounds every wait: far above what any step needs.
const patience = 10 * time.Second

func wsURL(s *httptest.Server) string { return "ws" + strings.TrimPrefix(s.URL, "http") + "/agent" }

func dialCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	return ctx
}

// Every way a dial can fail, and what it means.
func TestDialErrorKinds(t *testing.T) {
	t.Parallel()
	status := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) { http.Error(w, http.StatusText(code), code) }
	}
	upgrader := websocket.Upgrader{}
	echo := func(w http.ResponseWriter, r *http.Request) {
		ws, err := upgrader.Upgrade(w, r, nil)
		if err == nil {
			ws.Close()
		}
	}
	for _, tc := range []struct {
		name     string
		handler  http.HandlerFunc
		tls      bool   // serve TLS
		scheme   string // dial with this scheme ("ws" or "wss")
		want     Kind
		status   int
		hintPart string
	}{
		{"401 wrong secret", status(401), false, "ws", Unauthorized, 401, "API key"},
		{"403", status(403), false, "ws", Unauthorized, 403, "API key"},
		{"404 not an agent endpoint", status(404), false, "ws", Misconfigured, 404, "base URL"},
		{"200 a web page, not LiveKit", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>")) }, false, "ws", Misconfigured, 200, "LiveKit server"},
		{"400", status(400), false, "ws", Misconfigured, 400, "LiveKit server"},
		{"429 refused for now", status(429), false, "ws", Refused, 429, ""},
		{"503 refused for now", status(503), false, "ws", Refused, 503, ""},
		{"502 from a proxy", status(502), false, "ws", Lost, 502, ""},
		{"500", status(500), false, "ws", Lost, 500, ""},
		{"wss to a plain server", echo, false, "wss", Misconfigured, 0, "ws://"},
		{"ws to a TLS server", echo, true, "ws", Misconfigured, 400, ""},
		{"wss with a certificate that does not verify", echo, true, "wss", Misconfigured, 0, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var srv *httptest.Server
			if tc.tls {
				srv = httptest.NewTLSServer(tc.handler)
			} else {
				srv = httptest.NewServer(tc.handler)
			}
			defer srv.Close()
			u := tc.scheme + strings.TrimPrefix(strings.TrimPrefix(srv.URL, "https"), "http") + "/agent"
			c, err := Dial(dialCtx(t), DialConfig{URL: u})
			if err == nil {
				c.Abort()
				t.Fatal("dial succeeded")
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v is not an *Error", err, err)
			}
			if e.Kind != tc.want || KindOf(err) != tc.want {
				t.Errorf("kind %s, want %s (%v)", e.Kind, tc.want, err)
			}
			if e.Status != tc.status {
				t.Errorf("status %d, want %d", e.Status, tc.status)
			}
			if !strings.Contains(err.Error(), tc.hintPart) {
				t.Errorf("error %q does not say %q", err, tc.hintPart)
			}
			if tc.want.Permanent() != (tc.want == Unauthorized || tc.want == Misconfigured) {
				t.Errorf("Permanent() = %v for %s", tc.want.Permanent(), tc.want)
			}
		})
	}
}

func TestDialNothingListeningIsLost(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Dial(dialCtx(t), DialConfig{URL: "ws://" + addr + "/agent"})
	if KindOf(err) != Lost {
		t.Fatalf("dial of a closed port: kind %s (%v), want lost", KindOf(err), err)
	}
}

func TestDialStoppedByContext(t *testing.T) {
	t.Parallel()
	// A server that accepts the TCP connection and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = Dial(ctx, DialConfig{URL: "ws://" + ln.Addr().String() + "/agent"})
	if KindOf(err) != Stopped {
		t.Fatalf("dial with a cancelled context: kind %s (%v), want stopped", KindOf(err), err)
	}
}

// pair returns both ends of a connection; serve runs on the server's end.
func pair(t *testing.T, serve func(*Server)) *Worker {
	t.Helper()
	upgrader := websocket.Upgrader{}
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		ws, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		serve(Accept(ws))
	}))
	t.Cleanup(func() {
		select {
		case <-done:
		case <-time.After(patience):
			t.Error("server end did not return")
		}
		srv.Close()
	})
	c, err := Dial(dialCtx(t), DialConfig{URL: wsURL(srv)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Abort() })
	return c
}

func TestMessagesBothWays(t *testing.T) {
	t.Parallel()
	c := pair(t, func(s *Server) {
		m, err := s.Read()
		if err != nil {
			t.Errorf("server read: %v", err)
			return
		}
		if m.GetRegister().GetAgentName() != "bot" {
			t.Errorf("server read %v", m)
		}
		if err := s.Write(&livekit.ServerMessage{Message: &livekit.ServerMessage_Register{
			Register: &livekit.RegisterWorkerResponse{WorkerId: "AW_1"}}}); err != nil {
			t.Errorf("server write: %v", err)
		}
		_, err = s.Read()
		if KindOf(err) != Closed {
			t.Errorf("server read after the worker closed normally: kind %s (%v), want closed", KindOf(err), err)
		}
	})
	if err := c.Write(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Register{
		Register: &livekit.RegisterWorkerRequest{AgentName: "bot"}}}); err != nil {
		t.Fatal(err)
	}
	m, err := c.Read()
	if err != nil || m.GetRegister().GetWorkerId() != "AW_1" {
		t.Fatalf("read %v %v", m, err)
	}
	if err := c.Close(websocket.CloseNormalClosure, "bye"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(); KindOf(err) != Stopped {
		t.Errorf("read after our own close: kind %s (%v), want stopped", KindOf(err), err)
	}
}

// Every way a connection can end under a read, and what it means.
func TestReadErrorKinds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		serve func(*Server)
		want  Kind
		code  int
	}{
		{"close frame 1000", func(s *Server) { _ = s.Close(websocket.CloseNormalClosure, "") }, Closed, 1000},
		{"close frame 1001 going away", func(s *Server) { _ = s.Close(websocket.CloseGoingAway, "") }, Closed, 1001},
		{"close frame 1011 internal error", func(s *Server) { _ = s.Close(websocket.CloseInternalServerErr, "") }, Closed, 1011},
		{"close frame 1008 policy violation", func(s *Server) { _ = s.Close(websocket.ClosePolicyViolation, "no") }, Refused, 1008},
		{"close frame 1002 protocol error", func(s *Server) { _ = s.Close(websocket.CloseProtocolError, "") }, Refused, 1002},
		{"TCP close without a close frame (1006)", func(s *Server) { _ = s.Abort() }, Lost, 0},
		{"reset", func(s *Server) {
			if tc, ok := s.ws.NetConn().(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = s.Abort()
		}, Lost, 0},
		{"text frame", func(s *Server) {
			_ = s.WriteFrame(websocket.TextMessage, []byte("{}"))
			time.Sleep(100 * time.Millisecond)
		}, Malformed, 0},
		{"garbage", func(s *Server) {
			_ = s.WriteFrame(websocket.BinaryMessage, []byte{0xff, 0xff, 0xff})
			time.Sleep(100 * time.Millisecond)
		}, Malformed, 0},
		{"oversized frame", func(s *Server) { _ = s.WriteFrame(websocket.BinaryMessage, make([]byte, MaxFrame+1)) }, Malformed, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := pair(t, tc.serve)
			_ = c.SetReadDeadline(time.Now().Add(patience))
			_, err := c.Read()
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("read error %T %v is not an *Error", err, err)
			}
			if e.Kind != tc.want || e.Code != tc.code {
				t.Errorf("kind %s code %d, want %s %d (%v)", e.Kind, e.Code, tc.want, tc.code, err)
			}
			if tc.want == Malformed && !errors.Is(err, ErrFrame) {
				t.Errorf("malformed frame error %v does not wrap ErrFrame", err)
			}
		})
	}
}

func TestReadTimeoutIsLost(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c := pair(t, func(s *Server) { <-release })
	defer close(release)
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(); KindOf(err) != Lost {
		t.Fatalf("read past its deadline: kind %s (%v), want lost", KindOf(err), err)
	}
}

func TestKindOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want Kind
	}{
		{New(GoAway, "read", errors.New("x")), GoAway},
		{errors.Join(errors.New("wrapped"), New(Refused, "dial", nil)), Refused},
		{context.Canceled, Stopped},
		{errors.New("anything else"), Lost},
	} {
		if got := KindOf(tc.err); got != tc.want {
			t.Errorf("KindOf(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
	for k := Lost; k <= Stopped; k++ {
		if strings.HasPrefix(k.String(), "Kind(") {
			t.Errorf("kind %d has no name", k)
		}
	}
}

// A URL the dialer cannot use is misconfigured, never retried.
func TestDialMalformedURLIsMisconfigured(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"http://127.0.0.1:1/agent", "HTTPS://127.0.0.1:1/agent", "ftp://127.0.0.1:1/agent", "ws://[::1/agent"} {
		_, err := Dial(dialCtx(t), DialConfig{URL: u})
		if k := KindOf(err); k != Misconfigured || !k.Permanent() {
			t.Errorf("dial %q: kind %s (%v), want misconfigured", u, k, err)
		}
	}
}
