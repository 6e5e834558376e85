package lkserver

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
)

// mainSrv is started by RunMain in TestMain and shared by the tests that
// only read from it.
var mainSrv *Server

func TestMain(m *testing.M) {
	// The SDK logs every WebRTC state change; the tests assert on results.
	lksdk.SetLogger(logger.GetDiscardLogger())
	if Short() && os.Getenv(envRunMainUnderShort) == "" {
		os.Exit(m.Run()) // RunMain would run none; the tests without a server run
	}
	os.Exit(RunMain(m, Options{}, func(s *Server) { mainSrv = s }))
}

// envRunMainUnderShort makes TestMain call RunMain even under -short, for
// TestShortStartsNoServer.
const envRunMainUnderShort = "LKSERVER_TEST_RUNMAIN_UNDER_SHORT"

// Under -short, the helpers that start a server skip the test that asks for
// one, and RunMain runs no test at all: each case runs this test binary
// again with -test.short and reads what it reports.
func TestShortStartsNoServer(t *testing.T) {
	SkipShort(t) // the cases run with -short themselves
	t.Parallel()
	for _, tc := range []struct {
		name    string
		test    string // -test.run pattern
		env     string // extra environment
		want    []string
		notWant string
	}{
		{name: "StartTB", test: "^TestStartServesHTTPWebSocketAndWebRTC$",
			want: []string{"--- SKIP: TestStartServesHTTPWebSocketAndWebRTC", ShortSkipReason}},
		{name: "Shared", test: "^TestSharedStartsOnceAndCloses$",
			want: []string{"--- SKIP: TestSharedStartsOnceAndCloses", ShortSkipReason}},
		{name: "StartRedisTB", test: "^TestTwoNodesShareRedis$",
			want: []string{"--- SKIP: TestTwoNodesShareRedis", ShortSkipReason}},
		{name: "RunMain", test: "^TestBinaryFromEnv$", env: envRunMainUnderShort + "=1",
			want: []string{ShortSkipReason + " (every test of this package)"}, notWant: "TestBinaryFromEnv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.short", "-test.v", "-test.count=1", "-test.run", tc.test)
			cmd.Env = append(os.Environ(), tc.env)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("test binary with -short: %v\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if tc.notWant != "" && strings.Contains(string(out), tc.notWant) {
				t.Errorf("output mentions %q, which should not have run:\n%s", tc.notWant, out)
			}
		})
	}
}

func TestRunMainServer(t *testing.T) {
	SkipShort(t)
	t.Parallel()
	if mainSrv == nil || mainSrv.PID() == 0 {
		t.Fatal("RunMain did not provide a running server")
	}
	getOK(t, mainSrv)
	validateWS(t, mainSrv)
}

func TestSharedStartsOnceAndCloses(t *testing.T) {
	t.Parallel()
	var sh Shared
	if err := sh.Close(); err != nil {
		t.Fatalf("Close of an unused Shared: %v", err)
	}
	sh = Shared{}
	s1 := sh.Server(t)
	s2 := sh.Server(t)
	if s1 != s2 {
		t.Fatal("Shared.Server started a second server")
	}
	getOK(t, s1)
	if err := sh.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if p := s1.PID(); p != 0 {
		t.Fatalf("PID() after Close = %d, want 0", p)
	}
	if err := sh.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestBusyPortRetryDecision(t *testing.T) {
	err := busyPort("x\nlisten tcp 127.0.0.1:7880: bind: address already in use\n")
	busy, ok := err.(*portInUseError)
	if !ok || busy.Port != 7880 {
		t.Fatalf("busyPort(tcp) = %v, want port 7880", err)
	}
	if err := busyPort("listen udp 127.0.0.1:50000: bind: address already in use"); err == nil || err.(*portInUseError).Port != 50000 {
		t.Fatalf("busyPort(udp) = %v, want port 50000", err)
	}
	if err := busyPort("starting LiveKit server"); err != nil {
		t.Fatalf("busyPort without bind error = %v, want nil", err)
	}
	// Caller chose 7880 itself: no retry. Caller left a port at 0 and the
	// busy one is not one of its choices: retry with fresh ports.
	if busy.in(7880, 0, 0) {
		t.Error("retry when the caller's own port is busy")
	}
	if !busy.in(0, 7881, 7882) {
		t.Error("no retry when a picked port is busy")
	}
	if busy.in(7000, 7001, 7002) {
		t.Error("retry although the caller chose every port")
	}
}

// getOK asserts that the server's health endpoint answers 200 "OK".
func getOK(t *testing.T, s *Server) {
	t.Helper()
	if err := checkHealth(t.Context(), &http.Client{Timeout: 2 * time.Second}, s.HTTPURL()); err != nil {
		t.Fatalf("health check %s: %v", s.HTTPURL(), err)
	}
}

// validateWS asserts that the signalling endpoint accepts a token signed
// with the server's keys and rejects one signed with another secret.
func validateWS(t *testing.T, s *Server) {
	t.Helper()
	token := func(secret string) string {
		at := auth.NewAccessToken(s.APIKey(), secret)
		at.SetIdentity("probe").SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: "probe"})
		tok, err := at.ToJWT()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	status := func(tok string) int {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.HTTPURL()+"/rtc/validate?access_token="+tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET /rtc/validate: %v", err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if got := status(token(s.APISecret())); got != http.StatusOK {
		t.Errorf("/rtc/validate with valid token: status %d, want 200", got)
	}
	if got := status(token(strings.Repeat("x", 64))); got != http.StatusUnauthorized {
		t.Errorf("/rtc/validate with foreign secret: status %d, want 401", got)
	}
}

// joinRoom connects a participant over WebSocket and WebRTC.
func joinRoom(t *testing.T, s *Server, room, identity string, cb *lksdk.RoomCallback) *lksdk.Room {
	t.Helper()
	r, err := lksdk.ConnectToRoom(s.URL(), lksdk.ConnectInfo{
		APIKey:              s.APIKey(),
		APISecret:           s.APISecret(),
		RoomName:            room,
		ParticipantIdentity: identity,
	}, cb, lksdk.WithAutoSubscribe(false))
	if err != nil {
		t.Fatalf("join %s as %s: %v", room, identity, err)
	}
	t.Cleanup(r.Disconnect)
	return r
}

func TestStartServesHTTPWebSocketAndWebRTC(t *testing.T) {
	t.Parallel()
	s := StartTB(t, Options{})
	if !strings.HasPrefix(s.URL(), "ws://127.0.0.1:") || !strings.HasPrefix(s.HTTPURL(), "http://127.0.0.1:") {
		t.Fatalf("URL() = %q, HTTPURL() = %q, want loopback URLs", s.URL(), s.HTTPURL())
	}
	if !strings.HasPrefix(s.APIKey(), "lk") || len(s.APISecret()) < 32 {
		t.Fatalf("generated key %q / secret of %d chars, want lk… and >= 32 chars", s.APIKey(), len(s.APISecret()))
	}
	getOK(t, s)
	validateWS(t, s)

	// Two participants exchange a reliable data packet: this needs the
	// signalling WebSocket and a working WebRTC transport on loopback.
	got := make(chan string, 1)
	cb := lksdk.NewRoomCallback()
	cb.OnDataPacket = func(p lksdk.DataPacket, params lksdk.DataReceiveParams) {
		if u, ok := p.(*lksdk.UserDataPacket); ok {
			select {
			case got <- params.SenderIdentity + ":" + string(u.Payload):
			default:
			}
		}
	}
	joinRoom(t, s, "room", "receiver", cb)
	sender := joinRoom(t, s, "room", "sender", nil)
	deadline := time.After(15 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		// The receiver's subscriber transport may still be connecting;
		// resend until the packet arrives.
		if err := sender.LocalParticipant.PublishDataPacket(&lksdk.UserDataPacket{Payload: []byte("hello")}, lksdk.WithDataPublishReliable(true)); err != nil {
			t.Fatalf("publish data: %v", err)
		}
		select {
		case msg := <-got:
			if msg != "sender:hello" {
				t.Fatalf("received %q, want %q", msg, "sender:hello")
			}
			return
		case <-tick.C:
		case <-deadline:
			t.Fatal("data packet not received over WebRTC within 15s")
		}
	}
}

func TestRestartKeepsPortsAndKeys(t *testing.T) {
	t.Parallel()
	s := StartTB(t, Options{})
	url, key, secret, pid := s.URL(), s.APIKey(), s.APISecret(), s.PID()
	if pid == 0 {
		t.Fatal("PID() = 0 for a running server")
	}
	rooms := lksdk.NewRoomServiceClient(s.HTTPURL(), key, secret)
	if _, err := rooms.CreateRoom(t.Context(), &livekit.CreateRoomRequest{Name: "before-restart"}); err != nil {
		t.Fatalf("CreateRoom: %v", err)
	}

	if err := s.Restart(t.Context()); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if s.URL() != url || s.APIKey() != key || s.APISecret() != secret {
		t.Fatalf("after Restart: %s %s, want %s %s with the same secret", s.URL(), s.APIKey(), url, key)
	}
	if p := s.PID(); p == 0 || p == pid {
		t.Fatalf("PID() after Restart = %d, want a new non-zero pid (old %d)", p, pid)
	}
	getOK(t, s)
	// Same keys still work, and a single node keeps rooms in memory only,
	// so the new process starts empty.
	res, err := rooms.ListRooms(t.Context(), &livekit.ListRoomsRequest{})
	if err != nil {
		t.Fatalf("ListRooms after Restart: %v", err)
	}
	if len(res.Rooms) != 0 {
		t.Errorf("rooms after Restart = %v, want none", res.Rooms)
	}
	validateWS(t, s)
}

func TestKillThenRestart(t *testing.T) {
	t.Parallel()
	s := StartTB(t, Options{})
	pid := s.PID()
	if err := s.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if p := s.PID(); p != 0 {
		t.Fatalf("PID() after Kill = %d, want 0", p)
	}
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(s.HTTPURL(), "http://"), time.Second); err == nil {
		t.Fatal("HTTP port still accepts connections after Kill")
	}
	if err := s.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop after Kill: %v", err)
	}
	if err := s.Restart(t.Context()); err != nil {
		t.Fatalf("Restart after Kill: %v", err)
	}
	if p := s.PID(); p == 0 || p == pid {
		t.Fatalf("PID() after Restart = %d, want a new non-zero pid (old %d)", p, pid)
	}
	getOK(t, s)
	validateWS(t, s)
}

func TestStopIsIdempotent(t *testing.T) {
	t.Parallel()
	var logs syncbuf.Buffer
	s := StartTB(t, Options{Logs: &logs})
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if p := s.PID(); p != 0 {
		t.Fatalf("PID() after Stop = %d, want 0", p)
	}
	if !strings.Contains(logs.String(), "starting LiveKit server") {
		t.Errorf("Logs writer did not receive the server output; got:\n%s", logs.String())
	}
	// A Stop right after Start must be honoured by the first, graceful
	// SIGTERM (the server ignores one sent before it marks itself running).
	if logs := s.RecentLogs(); !strings.Contains(logs, `"force": false`) || strings.Contains(logs, `"force": true`) {
		t.Errorf("RecentLogs() does not show a graceful shutdown on the first SIGTERM; got:\n%s", logs)
	}
}

func TestStopReportsCrash(t *testing.T) {
	t.Parallel()
	s := StartTB(t, Options{})
	// Kill the process behind the harness's back, like a crash.
	p, err := os.FindProcess(s.PID())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.current().done:
	case <-time.After(5 * time.Second):
		t.Fatal("killed server not reaped within 5s")
	}
	if p := s.PID(); p != 0 {
		t.Fatalf("PID() after crash = %d, want 0", p)
	}
	err = s.Stop()
	if err == nil || !strings.Contains(err.Error(), "exited unexpectedly") {
		t.Fatalf("Stop after crash = %v, want an 'exited unexpectedly' error", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop after crash = %v, want nil", err)
	}
}

func TestStartFailureIncludesServerLog(t *testing.T) {
	SkipShort(t)
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	_, err = Start(t.Context(), Options{Port: port})
	if err == nil {
		t.Fatalf("Start on busy port %d succeeded", port)
	}
	var busy *portInUseError
	if !errors.As(err, &busy) || busy.Port != port || !strings.Contains(err.Error(), "last lines of livekit-server output") {
		t.Fatalf("Start on busy port: error lacks the server log tail:\n%v", err)
	}
}

func TestTwoNodesShareRedis(t *testing.T) {
	t.Parallel()
	r := StartRedisTB(t)
	if err := r.Stop(); err != nil {
		t.Fatalf("Redis.Stop: %v", err)
	}
	if err := ping(t.Context(), r.Addr()); err == nil {
		t.Fatal("redis still answers after Stop")
	}
	if err := r.Stop(); err != nil {
		t.Fatalf("second Redis.Stop: %v", err)
	}

	r = StartRedisTB(t)
	a := StartTB(t, Options{RedisAddr: r.Addr()})
	b := StartTB(t, Options{RedisAddr: r.Addr(), APIKey: a.APIKey(), APISecret: a.APISecret()})
	getOK(t, a)
	getOK(t, b)
	if a.URL() == b.URL() {
		t.Fatalf("both nodes on %s", a.URL())
	}

	// A room created through node a is visible through node b: both use
	// the shared Redis.
	ra := lksdk.NewRoomServiceClient(a.HTTPURL(), a.APIKey(), a.APISecret())
	rb := lksdk.NewRoomServiceClient(b.HTTPURL(), b.APIKey(), b.APISecret())
	if _, err := ra.CreateRoom(t.Context(), &livekit.CreateRoomRequest{Name: "shared"}); err != nil {
		t.Fatalf("CreateRoom on node a: %v", err)
	}
	res, err := rb.ListRooms(t.Context(), &livekit.ListRoomsRequest{Names: []string{"shared"}})
	if err != nil {
		t.Fatalf("ListRooms on node b: %v", err)
	}
	if len(res.Rooms) != 1 || res.Rooms[0].Name != "shared" {
		t.Fatalf("node b lists %v, want room %q created on node a", res.Rooms, "shared")
	}

	// Both nodes are registered in Redis as serving, as the server's own
	// list-nodes command sees it.
	out, err := exec.CommandContext(t.Context(), a.Options().Binary,
		"--redis-host", r.Addr(), "--config-body", "rtc: {node_ip: 127.0.0.1}", "list-nodes").CombinedOutput()
	if err != nil {
		t.Fatalf("list-nodes: %v\n%s", err, out)
	}
	for _, s := range []*Server{a, b} {
		id := nodeID(t, s)
		if !strings.Contains(string(out), id) {
			t.Errorf("list-nodes does not show node %s of %s:\n%s", id, s.URL(), out)
		}
	}
	if n := strings.Count(string(out), "(SERVING)"); n != 2 {
		t.Errorf("list-nodes shows %d serving nodes, want 2:\n%s", n, out)
	}
}

var nodeIDRE = regexp.MustCompile(`"nodeID": "(ND_[A-Za-z0-9]+)"`)

// nodeID returns the node id the server logged at startup.
func nodeID(t *testing.T, s *Server) string {
	t.Helper()
	m := nodeIDRE.FindStringSubmatch(s.RecentLogs())
	if m == nil {
		t.Fatalf("no node id in the log of %s:\n%s", s.URL(), s.RecentLogs())
	}
	return m[1]
}

func TestBinaryFromEnv(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "livekit-server")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvServerBinary, bin)
	got, err := Binary(t.Context(), nil)
	if err != nil || got != bin {
		t.Fatalf("Binary() = %q, %v; want %q", got, err, bin)
	}

	t.Setenv(EnvServerBinary, filepath.Join(t.TempDir(), "missing"))
	if _, err := Binary(t.Context(), nil); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Binary() with missing %s: %v, want ErrNotExist", EnvServerBinary, err)
	}
}

// TestBinaryConcurrentInstall runs Binary from several goroutines against an
// empty cache, with a stand-in go command that records its invocations, and
// checks that exactly one install ran and every caller got the result.
func TestBinaryConcurrentInstall(t *testing.T) {
	cache := t.TempDir()
	tools := t.TempDir()
	calls := filepath.Join(tools, "calls")
	fakeGo := `#!/bin/sh
echo "$@" >> "` + calls + `"
sleep 1
printf '#!/bin/sh\necho fake\n' > "$GOBIN/server"
chmod +x "$GOBIN/server"
`
	if err := os.WriteFile(filepath.Join(tools, "go"), []byte(fakeGo), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", tools+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv(EnvServerBinary, "")
	t.Setenv(EnvCacheDir, cache)

	want := filepath.Join(cache, "livekit-server", Version, "server")
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			got, err := Binary(t.Context(), io.Discard)
			if err == nil && got != want {
				err = fmt.Errorf("got %q, want %q", got, want)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	b, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); len(lines) != 1 || lines[0] != "install "+serverPackage+"@"+Version {
		t.Fatalf("go invocations = %q, want exactly one %q", lines, "install "+serverPackage+"@"+Version)
	}
	entries, err := os.ReadDir(filepath.Dir(want))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".install-") {
			t.Errorf("temporary install dir %s left behind", e.Name())
		}
	}
}
