package faultproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/lkagent/lkagent/internal/testkit/faultproxy"
	"github.com/lkagent/lkagent/internal/testkit/wait"
)

// Bounds for timed assertions. waitLong is how long something expected to
// happen may take; quiet is how long something expected not to happen is
// watched for.
const (
	waitLong = 10 * time.Second
	quiet    = 300 * time.Millisecond
)

// backend is the server behind the proxy: a WebSocket echo for upgrade
// requests (with a few special paths) and a plain HTTP answer otherwise.
type backend struct {
	srv      *httptest.Server
	conns    atomic.Int32 // TCP connections accepted
	upgrades atomic.Int32 // echo WebSockets opened
}

var upgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

func newBackend(t *testing.T) *backend {
	t.Helper()
	b := &backend{}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(b.serve))
	b.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			b.conns.Add(1)
		}
	}
	b.srv.Start()
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) addr() string { return b.srv.Listener.Addr().String() }

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "ok %s %s", r.Method, r.URL.Path)
		return
	}
	switch r.URL.Path {
	case "/deny/agent":
		http.Error(w, "denied", http.StatusUnauthorized)
		return
	case "/greet/agent":
		greet(w, r)
		return
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	b.upgrades.Add(1)
	defer ws.Close()
	for {
		mt, msg, err := ws.ReadMessage()
		if err != nil {
			return
		}
		if err := ws.WriteMessage(mt, msg); err != nil {
			return
		}
	}
}

// greet completes the upgrade by hand and sends a binary message "hi" in
// the same write as the response head.
func greet(w http.ResponseWriter, r *http.Request) {
	nc, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	defer nc.Close()
	sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	head := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n"
	if _, err := nc.Write(append([]byte(head), 0x82, 2, 'h', 'i')); err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, nc)
}

// newEnv starts a backend and a proxy in front of it. At cleanup it closes
// the proxy and checks that none of its goroutines is left.
func newEnv(t *testing.T) (*backend, *faultproxy.Proxy) {
	t.Helper()
	b := newBackend(t)
	p, err := faultproxy.New(b.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if g := proxyGoroutines(time.Second); len(g) > 0 {
			t.Errorf("goroutines left after Close:\n%s", strings.Join(g, "\n\n"))
		}
	})
	return b, p
}

// proxyGoroutines returns the stacks of goroutines running code of the
// proxy, waiting up to grace for goroutines that are returning.
func proxyGoroutines(grace time.Duration) []string {
	deadline := time.Now().Add(grace)
	for {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var found []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "faultproxy.(*") {
				found = append(found, g)
			}
		}
		if len(found) == 0 || time.Now().After(deadline) {
			return found
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dial(p *faultproxy.Proxy, path string) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: waitLong}
	ws, resp, err := d.Dial(p.URL()+path, nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	return ws, resp, err
}

func mustDial(t *testing.T, p *faultproxy.Proxy, path string) *websocket.Conn {
	t.Helper()
	ws, _, err := dial(p, path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws
}

// echo sends msg and checks that it comes back.
func echo(t *testing.T, ws *websocket.Conn, msg string) {
	t.Helper()
	_ = ws.SetWriteDeadline(time.Now().Add(waitLong))
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(waitLong))
	_, got, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("read echo of %q: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
	_ = ws.SetReadDeadline(time.Time{})
}

// readErr reads from ws, expecting the connection to end, and returns the
// error.
func readErr(t *testing.T, ws *websocket.Conn) error {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(waitLong))
	_, msg, err := ws.ReadMessage()
	if err == nil {
		t.Fatalf("read: got message %q, want the connection to end", msg)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read: %v, want the connection to end", err)
	}
	return err
}

// checkCutErr checks that err is what a client sees of a connection cut
// with mode.
func checkCutErr(t *testing.T, err error, mode faultproxy.CutMode) {
	t.Helper()
	switch mode {
	case faultproxy.FIN:
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseAbnormalClosure {
			t.Fatalf("after a FIN cut: got %v, want a close error 1006", err)
		}
	case faultproxy.RST:
		if runtime.GOOS == "linux" && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("after a RST cut: got %v, want ECONNRESET", err)
		}
	}
}

// httpDo sends one request on a fresh connection and returns the body.
func httpDo(p *faultproxy.Proxy, method, path string) (string, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: waitLong}
	req, err := http.NewRequest(method, p.HTTPURL()+path, strings.NewReader("{}"))
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

func mustHTTP(t *testing.T, p *faultproxy.Proxy, method, path string) {
	t.Helper()
	body, err := httpDo(p, method, path)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if want := "ok " + method + " " + path; body != want {
		t.Fatalf("%s %s: got %q, want %q", method, path, body, want)
	}
}

func rawDial(t *testing.T, p *faultproxy.Proxy) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", p.Addr(), waitLong)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

func waitAccepted(t *testing.T, p *faultproxy.Proxy, k faultproxy.Kind, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := p.WaitAccepted(ctx, k, n); err != nil {
		t.Fatalf("WaitAccepted(%v, %d): %v (accepted %d)", k, n, err, p.Accepted(k))
	}
}

var kinds = []faultproxy.Kind{faultproxy.KindAgent, faultproxy.KindRoom, faultproxy.KindOther}

var modes = []faultproxy.CutMode{faultproxy.FIN, faultproxy.RST}

func TestKindString(t *testing.T) {
	for k, want := range map[faultproxy.Kind]string{
		faultproxy.KindAgent: "agent", faultproxy.KindRoom: "room", faultproxy.KindOther: "other", 7: "Kind(7)",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
	if faultproxy.FIN.String() != "FIN" || faultproxy.RST.String() != "RST" {
		t.Errorf("CutMode strings: %v %v", faultproxy.FIN, faultproxy.RST)
	}
}

func TestKindClassification(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, p *faultproxy.Proxy)
		want faultproxy.Kind
	}{
		{"agent", func(t *testing.T, p *faultproxy.Proxy) { echo(t, mustDial(t, p, "/agent"), "x") }, faultproxy.KindAgent},
		{"agent with query", func(t *testing.T, p *faultproxy.Proxy) { echo(t, mustDial(t, p, "/agent?protocol=1"), "x") }, faultproxy.KindAgent},
		{"agent under a prefix", func(t *testing.T, p *faultproxy.Proxy) { echo(t, mustDial(t, p, "/lk/agent"), "x") }, faultproxy.KindAgent},
		{"rtc", func(t *testing.T, p *faultproxy.Proxy) { echo(t, mustDial(t, p, "/rtc?access_token=a"), "x") }, faultproxy.KindRoom},
		{"rtc v1", func(t *testing.T, p *faultproxy.Proxy) { echo(t, mustDial(t, p, "/rtc/v1"), "x") }, faultproxy.KindRoom},
		{"rtc validate over plain HTTP", func(t *testing.T, p *faultproxy.Proxy) { mustHTTP(t, p, "GET", "/rtc/validate") }, faultproxy.KindRoom},
		{"twirp", func(t *testing.T, p *faultproxy.Proxy) {
			mustHTTP(t, p, "POST", "/twirp/livekit.RoomService/ListRooms")
		}, faultproxy.KindOther},
		{"agents is not agent", func(t *testing.T, p *faultproxy.Proxy) { mustHTTP(t, p, "GET", "/agents") }, faultproxy.KindOther},
		{"raw bytes", func(t *testing.T, p *faultproxy.Proxy) {
			nc := rawDial(t, p)
			if _, err := nc.Write([]byte("\x16\x03\x01\x00\x05hello\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			// The bytes reach the server, which rejects them.
			_ = nc.SetReadDeadline(time.Now().Add(waitLong))
			got, _ := io.ReadAll(nc)
			if !bytes.HasPrefix(got, []byte("HTTP/1.1 400")) {
				t.Fatalf("server answered %q, want a 400", got)
			}
		}, faultproxy.KindOther},
		{"silent client, then a request", func(t *testing.T, p *faultproxy.Proxy) {
			nc := rawDial(t, p)
			waitAccepted(t, p, faultproxy.KindOther, 1)
			if _, err := nc.Write([]byte("GET /agent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			_ = nc.SetReadDeadline(time.Now().Add(waitLong))
			resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if string(body) != "ok GET /agent" {
				t.Fatalf("body %q", body)
			}
		}, faultproxy.KindOther},
		{"keep-alive: first request decides", func(t *testing.T, p *faultproxy.Proxy) {
			nc := rawDial(t, p)
			br := bufio.NewReader(nc)
			_ = nc.SetDeadline(time.Now().Add(waitLong))
			for _, path := range []string{"/twirp/x", "/agent", "/rtc"} {
				if _, err := fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				if want := "ok GET " + path; string(body) != want {
					t.Fatalf("body %q, want %q", body, want)
				}
			}
		}, faultproxy.KindOther},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, p := newEnv(t)
			tc.run(t, p)
			for _, k := range kinds {
				want := 0
				if k == tc.want {
					want = 1
				}
				if got := p.Accepted(k); got != want {
					t.Errorf("Accepted(%v) = %d, want %d", k, got, want)
				}
			}
		})
	}
}

func TestCutAfterUpgrade(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			_, p := newEnv(t)
			p.CutAfterUpgrade(faultproxy.KindAgent, 2, mode)
			// Other kinds are not affected.
			echo(t, mustDial(t, p, "/rtc"), "room")
			for range 2 {
				ws := mustDial(t, p, "/agent") // the upgrade completes
				checkCutErr(t, readErr(t, ws), mode)
			}
			echo(t, mustDial(t, p, "/agent"), "third works")
			echo(t, mustDial(t, p, "/agent"), "fourth works")
			if got := p.Accepted(faultproxy.KindAgent); got != 4 {
				t.Errorf("Accepted(agent) = %d, want 4", got)
			}
		})
	}
}

func TestCutAfterUpgradeSeq(t *testing.T) {
	_, p := newEnv(t)
	seq := []faultproxy.CutMode{faultproxy.FIN, faultproxy.RST, faultproxy.FIN}
	p.CutAfterUpgradeSeq(faultproxy.KindAgent, seq...)
	for _, mode := range seq {
		checkCutErr(t, readErr(t, mustDial(t, p, "/agent")), mode)
	}
	echo(t, mustDial(t, p, "/agent"), "fourth works")
	p.CutAfterUpgradeSeq(faultproxy.KindAgent, faultproxy.RST)
	p.CutAfterUpgradeSeq(faultproxy.KindAgent) // replaces: nothing pending
	echo(t, mustDial(t, p, "/agent"), "cancelled")
}

func TestCutAfterUpgradeSkipsNon101(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			_, p := newEnv(t)
			p.CutAfterUpgrade(faultproxy.KindAgent, 1, mode)
			_, resp, err := dial(p, "/deny/agent")
			if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("dial /deny/agent: %v (response %v), want a 401", err, resp)
			}
			// The 401 did not count: the next upgrade is cut.
			checkCutErr(t, readErr(t, mustDial(t, p, "/agent")), mode)
			echo(t, mustDial(t, p, "/agent"), "works again")
		})
	}
}

func TestCutAfterUpgradeDropsBytesAfterHead(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			_, p := newEnv(t)
			var tapped atomic.Int32
			p.OnAgentFrame(func(bool, int, []byte) { tapped.Add(1) })
			// Without the fault, the server's first message arrives.
			ws := mustDial(t, p, "/greet/agent")
			_ = ws.SetReadDeadline(time.Now().Add(waitLong))
			if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != "hi" {
				t.Fatalf("greeting: %q, %v", msg, err)
			}
			wait.Until(t, waitLong, "the greeting to be tapped", func() bool { return tapped.Load() == 1 })

			p.CutAfterUpgrade(faultproxy.KindAgent, 1, mode)
			checkCutErr(t, readErr(t, mustDial(t, p, "/greet/agent")), mode)
			time.Sleep(quiet)
			if n := tapped.Load(); n != 1 {
				t.Errorf("tapped %d messages, want only the first greeting", n)
			}
		})
	}
}

func TestHealClearsCutAfterUpgrade(t *testing.T) {
	_, p := newEnv(t)
	p.CutAfterUpgrade(faultproxy.KindAgent, 5, faultproxy.RST)
	p.Heal()
	echo(t, mustDial(t, p, "/agent"), "not cut")
	p.CutAfterUpgrade(faultproxy.KindAgent, 5, faultproxy.RST)
	p.CutAfterUpgrade(faultproxy.KindAgent, 0, faultproxy.RST)
	echo(t, mustDial(t, p, "/agent"), "cancelled")
}

func TestCut(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			_, p := newEnv(t)
			if n := p.Cut(faultproxy.KindAgent, mode); n != 0 {
				t.Fatalf("Cut with no connections = %d", n)
			}
			a1, a2 := mustDial(t, p, "/agent"), mustDial(t, p, "/agent")
			room := mustDial(t, p, "/rtc")
			echo(t, a1, "1")
			echo(t, a2, "2")
			echo(t, room, "r")
			if n := p.Live(faultproxy.KindAgent); n != 2 {
				t.Fatalf("Live(agent) = %d, want 2", n)
			}
			if n := p.Cut(faultproxy.KindAgent, mode); n != 2 {
				t.Fatalf("Cut = %d, want 2", n)
			}
			checkCutErr(t, readErr(t, a1), mode)
			checkCutErr(t, readErr(t, a2), mode)
			a1.Close()
			a2.Close()
			echo(t, room, "room still works")
			wait.Until(t, waitLong, "cut connections to be gone", func() bool { return p.Live(faultproxy.KindAgent) == 0 })
			if n := p.Live(faultproxy.KindRoom); n != 1 {
				t.Errorf("Live(room) = %d, want 1", n)
			}
			echo(t, mustDial(t, p, "/agent"), "new one works")
		})
	}
}

type result struct {
	msg string
	err error
}

// readAll reads messages from ws into the returned channel until an error.
func readAll(t *testing.T, ws *websocket.Conn) <-chan result {
	ch := make(chan result, 100)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			_, msg, err := ws.ReadMessage()
			ch <- result{string(msg), err}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { ws.Close(); wg.Wait() })
	return ch
}

func TestBlackHoleLiveConnection(t *testing.T) {
	b, p := newEnv(t)
	ws := mustDial(t, p, "/agent")
	echo(t, ws, "before")
	got := readAll(t, ws)

	p.BlackHole(faultproxy.KindAgent)
	echo(t, mustDial(t, p, "/rtc"), "other kinds pass")
	sent := []string{"a", "b", "c"}
	for _, m := range sent {
		if err := ws.WriteMessage(websocket.BinaryMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case r := <-got:
		t.Fatalf("got %+v through a black hole", r)
	case <-time.After(quiet):
	}
	if n := p.Live(faultproxy.KindAgent); n != 1 {
		t.Fatalf("Live(agent) = %d, want 1", n)
	}

	p.Heal()
	for _, want := range sent {
		select {
		case r := <-got:
			if r.err != nil || r.msg != want {
				t.Fatalf("after Heal: got %+v, want %q", r, want)
			}
		case <-time.After(waitLong):
			t.Fatalf("after Heal: %q not echoed", want)
		}
	}
	if n := b.upgrades.Load(); n != 2 {
		t.Errorf("server saw %d upgrades, want 2", n)
	}
}

func TestBlackHoleNewConnection(t *testing.T) {
	b, p := newEnv(t)
	p.BlackHole(faultproxy.KindAgent)
	type dialed struct {
		ws  *websocket.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		ws, _, err := dial(p, "/agent")
		done <- dialed{ws, err}
	}()
	waitAccepted(t, p, faultproxy.KindAgent, 1)
	select {
	case d := <-done:
		t.Fatalf("dial completed through a black hole: %v", d.err)
	case <-time.After(quiet):
	}
	if n := b.conns.Load(); n != 0 {
		t.Fatalf("server saw %d connections while the client was held", n)
	}
	if n := p.Live(faultproxy.KindAgent); n != 1 {
		t.Fatalf("Live(agent) = %d, want 1", n)
	}
	p.Heal()
	var d dialed
	select {
	case d = <-done:
	case <-time.After(2 * waitLong):
		t.Fatal("dial did not complete after Heal")
	}
	if d.err != nil {
		t.Fatalf("dial after Heal: %v", d.err)
	}
	t.Cleanup(func() { d.ws.Close() })
	echo(t, d.ws, "after heal")
}

// TestBlackHoleLeavesBytesUnread sends more than the kernel buffers hold
// through a black hole: the write stalls (the proxy reads nothing), and
// after Heal every byte reaches the server.
func TestBlackHoleLeavesBytesUnread(t *testing.T) {
	_, p := newEnv(t)
	const size = 32 << 20
	nc := rawDial(t, p)
	_ = nc.SetDeadline(time.Now().Add(6 * waitLong))
	if _, err := fmt.Fprintf(nc, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", size); err != nil {
		t.Fatal(err)
	}
	waitAccepted(t, p, faultproxy.KindOther, 1)
	p.BlackHole(faultproxy.KindOther)
	wrote := make(chan error, 1)
	go func() {
		_, err := nc.Write(make([]byte, size))
		wrote <- err
	}()
	select {
	case err := <-wrote:
		t.Fatalf("a %d-byte write went through a black hole (err %v)", size, err)
	case <-time.After(quiet):
	}
	p.Heal()
	if err := <-wrote; err != nil {
		t.Fatalf("write after Heal: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "ok POST /upload" {
		t.Fatalf("body %q", body)
	}
}

func TestBlackHoleThenCut(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			_, p := newEnv(t)
			live := mustDial(t, p, "/agent")
			echo(t, live, "x")
			p.BlackHole(faultproxy.KindAgent)
			held := make(chan error, 1)
			go func() {
				ws, _, err := dial(p, "/agent")
				if ws != nil {
					ws.Close()
				}
				held <- err
			}()
			waitAccepted(t, p, faultproxy.KindAgent, 2)
			if n := p.Cut(faultproxy.KindAgent, mode); n != 2 {
				t.Fatalf("Cut = %d, want 2 (one live, one held)", n)
			}
			checkCutErr(t, readErr(t, live), mode)
			select {
			case err := <-held:
				if err == nil {
					t.Fatal("held dial succeeded after Cut")
				}
			case <-time.After(waitLong):
				t.Fatal("held dial did not fail after Cut")
			}
			p.Heal()
			echo(t, mustDial(t, p, "/agent"), "works after heal")
		})
	}
}

func TestDelay(t *testing.T) {
	const d = 150 * time.Millisecond
	cases := []struct {
		kind faultproxy.Kind
		run  func(t *testing.T, p *faultproxy.Proxy) // one round trip
	}{
		{faultproxy.KindAgent, func(t *testing.T, p *faultproxy.Proxy) {
			ws := mustDial(t, p, "/agent")
			echo(t, ws, "warm") // dialled before measuring
			p.Delay(faultproxy.KindAgent, d)
			start := time.Now()
			echo(t, ws, "delayed")
			if rtt := time.Since(start); rtt < 2*d {
				t.Errorf("round trip took %v, want at least %v", rtt, 2*d)
			}
		}},
		{faultproxy.KindOther, func(t *testing.T, p *faultproxy.Proxy) {
			p.Delay(faultproxy.KindOther, d)
			start := time.Now()
			mustHTTP(t, p, "POST", "/twirp/livekit.RoomService/ListRooms")
			if rtt := time.Since(start); rtt < 2*d {
				t.Errorf("request took %v, want at least %v", rtt, 2*d)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.kind.String(), func(t *testing.T) {
			_, p := newEnv(t)
			tc.run(t, p)
			// Removing the delay keeps things working.
			p.Delay(tc.kind, 0)
			echo(t, mustDial(t, p, "/agent"), "undelayed")
			mustHTTP(t, p, "GET", "/x")
		})
	}
}

func TestRefuse(t *testing.T) {
	_, p := newEnv(t)
	p.Refuse(faultproxy.KindAgent, true)
	_, _, err := dial(p, "/agent")
	if err == nil {
		t.Fatal("dial succeeded through Refuse")
	}
	if runtime.GOOS == "linux" && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("dial: %v, want ECONNRESET", err)
	}
	if n := p.Accepted(faultproxy.KindAgent); n != 1 {
		t.Errorf("Accepted(agent) = %d, want 1", n)
	}
	echo(t, mustDial(t, p, "/rtc"), "other kinds pass")
	mustHTTP(t, p, "GET", "/x")

	p.Refuse(faultproxy.KindOther, true)
	if _, err := httpDo(p, "GET", "/x"); err == nil {
		t.Error("HTTP request succeeded through Refuse")
	}
	p.Refuse(faultproxy.KindAgent, false)
	echo(t, mustDial(t, p, "/agent"), "accepted again")
	p.Heal()
	mustHTTP(t, p, "GET", "/x")
	wait.Until(t, waitLong, "refused connections to be gone", func() bool {
		return p.Live(faultproxy.KindAgent) == 1 && p.Live(faultproxy.KindOther) == 0
	})
}

type tapped struct {
	fromClient bool
	opcode     int
	payload    string
}

// maskedFrame builds a client frame.
func maskedFrame(fin bool, opcode int, payload string) []byte {
	b0 := byte(opcode)
	if fin {
		b0 |= 0x80
	}
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	f := []byte{b0, 0x80 | byte(len(payload))}
	f = append(f, key[:]...)
	for i := range len(payload) {
		f = append(f, payload[i]^key[i%4])
	}
	return f
}

func TestOnAgentFrame(t *testing.T) {
	_, p := newEnv(t)
	var mu sync.Mutex
	var got []tapped
	p.OnAgentFrame(func(fromClient bool, opcode int, payload []byte) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, tapped{fromClient, opcode, string(payload)})
	})
	// Room connections are not tapped.
	echo(t, mustDial(t, p, "/rtc"), "room")

	ws := mustDial(t, p, "/agent")
	big := strings.Repeat("0123456789abcdef", 20000/16)
	huge := strings.Repeat("z", 70000) // a 64-bit length on the wire
	var want []tapped
	both := func(op int, payload string) {
		want = append(want, tapped{true, op, payload}, tapped{false, op, payload})
	}

	_ = ws.SetReadDeadline(time.Now().Add(waitLong))
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, m, err := ws.ReadMessage(); err != nil || string(m) != "hello" {
		t.Fatalf("echo: %q %v", m, err)
	}
	both(websocket.TextMessage, "hello")

	echo(t, ws, "\x00\x01binary")
	both(websocket.BinaryMessage, "\x00\x01binary")

	// NextWriter sends a large message as several frames.
	w, err := ws.NextWriter(websocket.BinaryMessage)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(big); i += 1000 {
		if _, err := io.WriteString(w, big[i:i+1000]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(waitLong))
	if _, m, err := ws.ReadMessage(); err != nil || string(m) != big {
		t.Fatalf("echo of a fragmented message: %d bytes, %v", len(m), err)
	}
	both(websocket.BinaryMessage, big)

	echo(t, ws, huge)
	both(websocket.BinaryMessage, huge)

	// A fragmented message with a ping between its frames: the ping is
	// reported as it comes, the message once complete.
	var raw []byte
	raw = append(raw, maskedFrame(false, websocket.TextMessage, "hel")...)
	raw = append(raw, maskedFrame(true, websocket.PingMessage, "p")...)
	raw = append(raw, maskedFrame(false, 0, "l")...)
	raw = append(raw, maskedFrame(true, 0, "o")...)
	if _, err := ws.UnderlyingConn().Write(raw); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(waitLong))
	if _, m, err := ws.ReadMessage(); err != nil || string(m) != "hello" {
		t.Fatalf("echo of a hand-fragmented message: %q %v", m, err)
	}
	want = append(want,
		tapped{true, websocket.PingMessage, "p"}, tapped{true, websocket.TextMessage, "hello"},
		tapped{false, websocket.PongMessage, "p"}, tapped{false, websocket.TextMessage, "hello"})

	closeMsg := string(websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
	if err := ws.WriteControl(websocket.CloseMessage, []byte(closeMsg), time.Now().Add(waitLong)); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(waitLong))
	if _, _, err := ws.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("after close: %v", err)
	}
	want = append(want,
		tapped{true, websocket.CloseMessage, closeMsg},
		tapped{false, websocket.CloseMessage, string(websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))})

	split := func(all []tapped, fromClient bool) []tapped {
		var out []tapped
		for _, f := range all {
			if f.fromClient == fromClient {
				out = append(out, f)
			}
		}
		return out
	}
	wait.Until(t, waitLong, "every message to be tapped", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= len(want)
	})
	mu.Lock()
	defer mu.Unlock()
	for _, fromClient := range []bool{true, false} {
		g, w := split(got, fromClient), split(want, fromClient)
		if len(g) != len(w) {
			t.Errorf("fromClient=%v: tapped %d messages, want %d", fromClient, len(g), len(w))
			continue
		}
		for i := range w {
			if g[i] != w[i] {
				t.Errorf("fromClient=%v message %d: got (op %d, %d bytes %.20q), want (op %d, %d bytes %.20q)",
					fromClient, i, g[i].opcode, len(g[i].payload), g[i].payload, w[i].opcode, len(w[i].payload), w[i].payload)
			}
		}
	}
}

func TestOnAgentFrameRemoved(t *testing.T) {
	_, p := newEnv(t)
	var n atomic.Int32
	p.OnAgentFrame(func(bool, int, []byte) { n.Add(1) })
	ws := mustDial(t, p, "/agent")
	echo(t, ws, "a")
	wait.Until(t, waitLong, "two messages tapped", func() bool { return n.Load() == 2 })
	p.OnAgentFrame(nil)
	echo(t, ws, "b")
	if got := n.Load(); got != 2 {
		t.Errorf("tapped %d messages after the tap was removed", got-2)
	}
}

func TestWaitAccepted(t *testing.T) {
	_, p := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.WaitAccepted(ctx, faultproxy.KindRoom, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitAccepted with no connection: %v", err)
	}
	go func() { _, _ = httpDo(p, "GET", "/rtc") }()
	waitAccepted(t, p, faultproxy.KindRoom, 1)
	if err := p.WaitAccepted(context.Background(), faultproxy.KindRoom, 0); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidKindPanics(t *testing.T) {
	_, p := newEnv(t)
	defer func() {
		if recover() == nil {
			t.Error("BlackHole(Kind(9)) did not panic")
		}
	}()
	p.BlackHole(9)
}

func TestCloseWithLiveConnections(t *testing.T) {
	b := newBackend(t)
	baseline := runtime.NumGoroutine()
	p, err := faultproxy.New(b.addr())
	if err != nil {
		t.Fatal(err)
	}
	agent := mustDial(t, p, "/agent")
	echo(t, agent, "live")
	// A room connection cut with FIN whose client does not close: the proxy
	// is draining it.
	room := mustDial(t, p, "/rtc")
	echo(t, room, "live")
	p.Cut(faultproxy.KindRoom, faultproxy.FIN)
	// A held connection.
	p.BlackHole(faultproxy.KindOther)
	held := rawDial(t, p)
	if _, err := held.Write([]byte("GET /held HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	waitAccepted(t, p, faultproxy.KindOther, 1)
	// A connection that has sent nothing yet.
	silent := rawDial(t, p)
	// A delayed chunk waiting to be written.
	p.Delay(faultproxy.KindAgent, time.Hour)
	if err := agent.WriteMessage(websocket.BinaryMessage, []byte("stuck")); err != nil {
		t.Fatal(err)
	}
	// A tapped connection.
	p.OnAgentFrame(func(bool, int, []byte) {})

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if g := proxyGoroutines(time.Second); len(g) > 0 {
		t.Fatalf("goroutines left after Close:\n%s", strings.Join(g, "\n\n"))
	}
	readErr(t, agent)
	readErr(t, room)
	for _, nc := range []net.Conn{held, silent} {
		_ = nc.SetReadDeadline(time.Now().Add(waitLong))
		_, err := nc.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("read after Close: %v, want the connection closed", err)
		}
	}

	// Closed: everything is a no-op or reports it.
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := p.WaitAccepted(context.Background(), faultproxy.KindAgent, 5); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WaitAccepted after Close: %v", err)
	}
	p.BlackHole(faultproxy.KindAgent)
	p.Heal()
	if n := p.Cut(faultproxy.KindAgent, faultproxy.RST); n != 0 {
		t.Errorf("Cut after Close = %d", n)
	}
	for _, k := range kinds {
		if n := p.Live(k); n != 0 {
			t.Errorf("Live(%v) after Close = %d", k, n)
		}
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), waitLong); err == nil {
		t.Error("the proxy still accepts connections after Close")
	}

	for _, c := range []io.Closer{agent, room, held, silent} {
		c.Close()
	}
	wait.Until(t, waitLong, "the goroutine count to return to its baseline", func() bool {
		return runtime.NumGoroutine() <= baseline
	})
}

// TestConcurrentFaults changes faults at random while clients talk, for
// the race detector, and checks that everything works once healed.
func TestConcurrentFaults(t *testing.T) {
	_, p := newEnv(t)
	p.OnAgentFrame(func(bool, int, []byte) {})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := []string{"/agent", "/rtc"}[i%2]
			for {
				select {
				case <-stop:
					return
				default:
				}
				d := websocket.Dialer{HandshakeTimeout: time.Second}
				ws, _, err := d.Dial(p.URL()+path, nil)
				if err != nil {
					continue
				}
				for j := 0; j < 20; j++ {
					_ = ws.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
					_ = ws.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
					if ws.WriteMessage(websocket.BinaryMessage, []byte("m")) != nil {
						break
					}
					if _, _, err := ws.ReadMessage(); err != nil {
						break
					}
				}
				ws.Close()
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			k := kinds[rng.IntN(2)]
			switch rng.IntN(7) {
			case 0:
				p.BlackHole(k)
			case 1:
				p.Heal()
			case 2:
				p.Delay(k, time.Duration(rng.IntN(5))*time.Millisecond)
			case 3:
				p.Cut(k, modes[rng.IntN(2)])
			case 4:
				p.CutAfterUpgrade(k, rng.IntN(3), modes[rng.IntN(2)])
			case 5:
				p.Refuse(k, rng.IntN(2) == 0)
			case 6:
				_ = p.Live(k) + p.Accepted(k)
			}
			time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
		}
		p.Heal()
		close(stop)
	}()
	wg.Wait()
	p.Heal()
	echo(t, mustDial(t, p, "/agent"), "healed")
	echo(t, mustDial(t, p, "/rtc"), "healed")
}
