package livekittest

import (
	"sync"
	"testing"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
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

	mu  sync.Mutex
	lk  lkserver.Shared // starts, keeps and stops the server
	srv *Server         // the kit's view of lk's server, once started
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
	var log *serverLog
	if sh.srv == nil {
		o, l, err := serverOptions(sh.Options)
		if err != nil {
			t.Fatalf("livekittest: start shared livekit-server: %v", err)
		}
		sh.lk.Options, log = o, l
	}
	lk := sh.lk.Server(t) // fails t after Close, or if the server could not start
	if sh.srv == nil {
		sh.srv = newServer(lk, log)
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
func (sh *Shared) Close() error { return sh.lk.Close() }

// Run runs the tests and closes the server, and returns the exit code for
// os.Exit: it is meant to be the whole body of TestMain. A server that
// crashed during the tests makes the code non-zero.
func (sh *Shared) Run(m *testing.M) int { return sh.lk.Run(m) }
