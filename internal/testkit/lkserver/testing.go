package lkserver

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
)

// ShortSkipReason is why a test that needs a real server does not run under
// go test -short.
const ShortSkipReason = "skipping under -short: needs a real LiveKit server"

// Short reports whether the tests run with -short, the inner loop in which
// nothing starts a real server. Unlike [testing.Short] it may be called from
// TestMain before m.Run: it parses the command line first if that has not
// been done.
func Short() bool {
	if !flag.Parsed() {
		flag.Parse()
	}
	return testing.Short()
}

// SkipShort skips tb under go test -short. Every helper of this package
// that starts a server calls it, so a test that gets its server from one of
// them is skipped without a line of its own; a test that needs a server by
// other means calls it first.
func SkipShort(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip(ShortSkipReason)
	}
}

// StartTB starts a server for the test or benchmark tb and stops it in
// tb.Cleanup. It fails tb at once if the server cannot be started. When tb
// has failed, the cleanup also logs the end of the server's output. Under
// go test -short it skips tb instead (see [SkipShort]).
//
// If the binary has to be built first, build progress goes to the test log.
func StartTB(tb testing.TB, o Options) *Server {
	tb.Helper()
	SkipShort(tb)
	s, err := startForTest(tb.Context(), tb, o)
	if err != nil {
		tb.Fatalf("start livekit-server: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("stop livekit-server: %v", err)
		} else if tb.Failed() {
			tb.Logf("end of livekit-server output (%s):\n%s", s.URL(), s.RecentLogs())
		}
	})
	return s
}

// StartRedisTB starts a Redis for tb and stops it in tb.Cleanup. It skips
// the test when redis-server is not installed or under go test -short, and
// fails it on any other error.
func StartRedisTB(tb testing.TB) *Redis {
	tb.Helper()
	SkipShort(tb)
	r, err := StartRedis(tb.Context())
	if errors.Is(err, ErrRedisNotInstalled) {
		tb.Skipf("skipping: %v", err)
	}
	if err != nil {
		tb.Fatalf("start redis: %v", err)
	}
	tb.Cleanup(func() {
		if err := r.Stop(); err != nil {
			tb.Errorf("stop redis: %v", err)
		}
	})
	return r
}

// RunMain is for a package's TestMain: it starts one server with o, hands
// it to use (typically to store it in a package variable), runs the tests
// and stops the server, returning the exit code for os.Exit. If the server
// cannot be started no test runs and the code is 1.
//
//	var srv *lkserver.Server
//
//	func TestMain(m *testing.M) {
//		os.Exit(lkserver.RunMain(m, lkserver.Options{}, func(s *lkserver.Server) { srv = s }))
//	}
//
// The server is stopped even when tests fail; if the test binary crashes or
// is killed, the kernel kills the server with it (on Linux).
//
// Every test of a package using RunMain is taken to need the server: under
// go test -short RunMain starts nothing, runs no test and returns 0. A
// package that also has tests without a server uses [Shared] instead.
func RunMain(m *testing.M, o Options, use func(*Server)) int {
	if Short() {
		fmt.Println(ShortSkipReason + " (every test of this package)")
		return 0
	}
	ctx := context.Background()
	if o.Binary == "" {
		bin, err := Binary(ctx, os.Stderr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "lkserver: locate livekit-server: %v\n", err)
			return 1
		}
		o.Binary = bin
	}
	s, err := Start(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lkserver: start livekit-server: %v\n", err)
		return 1
	}
	use(s)
	code := m.Run()
	if err := s.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "lkserver: stop livekit-server: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Shared is one server shared by all tests of a package, started lazily by
// the first test that asks for it, so that a test binary whose selected
// tests need no server (or that only lists tests) starts none. Declare it as
// a package variable and stop it from TestMain with [Shared.Run]:
//
//	var shared lkserver.Shared
//
//	func TestMain(m *testing.M) { os.Exit(shared.Run(m)) }
//
//	func TestSomething(t *testing.T) {
//		srv := shared.Server(t)
//		...
//	}
//
// Tests sharing a server must not stop, kill or restart it, and should use
// distinct room names. The zero value is ready to use with default
// [Options]; set Options before the first call to Server.
type Shared struct {
	// Options configures the shared server.
	Options Options

	mu     sync.Mutex
	srv    *Server
	err    error // sticky start error
	closed bool
}

// Server returns the shared server, starting it on the first call. It fails
// tb if the server could not be started (then and on every later call).
// Under go test -short it skips tb instead (see [SkipShort]).
func (sh *Shared) Server(tb testing.TB) *Server {
	tb.Helper()
	SkipShort(tb)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	switch {
	case sh.closed:
		tb.Fatal("lkserver: Shared.Server called after Close")
	case sh.srv == nil && sh.err == nil:
		// Not tb.Context: the server outlives this test.
		sh.srv, sh.err = startForTest(context.Background(), tb, sh.Options)
	}
	if sh.err != nil {
		tb.Fatalf("start shared livekit-server: %v", sh.err)
	}
	return sh.srv
}

// Close stops the shared server if it was started. Later calls to
// [Shared.Server] fail.
func (sh *Shared) Close() error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.closed = true
	if sh.srv == nil {
		return nil
	}
	return sh.srv.Stop()
}

// Run runs the tests and then closes the shared server, returning the exit
// code for os.Exit; it is meant to be the whole body of TestMain.
func (sh *Shared) Run(m *testing.M) int {
	code := m.Run()
	if err := sh.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "lkserver: stop shared livekit-server: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// startForTest starts a server, reporting build progress to tb's log.
func startForTest(ctx context.Context, tb testing.TB, o Options) (*Server, error) {
	if o.Binary == "" {
		bin, err := Binary(ctx, tbWriter{tb})
		if err != nil {
			return nil, fmt.Errorf("locate livekit-server: %w", err)
		}
		o.Binary = bin
	}
	return Start(ctx, o)
}

// tbWriter writes to a test log.
type tbWriter struct{ tb testing.TB }

// Write implements io.Writer.
func (w tbWriter) Write(b []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
