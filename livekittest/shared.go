package livekittest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/lkagent/lkagent/internal/lkserver"
)

// Shared is one server shared by the tests of a package. The first test
// that asks for it starts it, so a run whose selected tests need no server
// starts none; TestMain stops it after the last test:
//
//	var shared livekittest.Shared
//
//	func TestMain(m *testing.M) { os.Exit(shared.Run(m)) }
//
//	func TestSupportBot(t *testing.T) {
//		srv := shared.Server(t)
//		room := livekittest.UniqueName("room") // tests share the server, not rooms
//		...
//	}
//
// Tests sharing a server should use names from [UniqueName] for rooms and
// agent names, so that neither their rooms nor their workers meet. The
// zero value is ready to use with default [Options]; set Options before
// the first call to [Shared.Server].
type Shared struct {
	// Options configures the server.
	Options Options

	mu     sync.Mutex
	srv    *Server
	err    error // the start error, returned to every later caller
	closed bool
}

// Server returns the shared server, starting it on the first call. It
// fails the test if the server could not be started (then and on every
// later call). If the test fails, the end of the server's output is logged
// when it ends. Under go test -short it skips the test, as [Start] does.
func (sh *Shared) Server(t testing.TB) *Server {
	t.Helper()
	lkserver.SkipShort(t)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	switch {
	case sh.closed:
		t.Fatal("livekittest: Shared.Server called after Close")
	case sh.srv == nil && sh.err == nil:
		// Not t.Context: the server outlives this test.
		sh.srv, sh.err = start(context.Background(), testLog{t}, sh.Options)
	}
	if sh.err != nil {
		t.Fatalf("livekittest: start shared livekit-server: %v", sh.err)
	}
	srv := sh.srv
	t.Cleanup(func() {
		if t.Failed() {
			srv.logTail(t)
		}
	})
	return srv
}

// Close stops the server if it was started. Later calls to [Shared.Server]
// fail the test that makes them.
func (sh *Shared) Close() error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.closed = true
	if sh.srv == nil {
		return nil
	}
	return sh.srv.lk.Stop()
}

// Run runs the tests and closes the server, and returns the exit code for
// os.Exit: it is meant to be the whole body of TestMain. A server that
// crashed during the tests makes the code non-zero.
func (sh *Shared) Run(m *testing.M) int {
	code := m.Run()
	if err := sh.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "livekittest: stop shared livekit-server: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}
