//go:build unix

package livekittest

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
)

// The server started by Start is stopped, its process gone and its port
// closed, once the test's cleanups have run.
func TestStartStopsServerAtCleanup(t *testing.T) {
	lkserver.SkipShort(t) // the subtest's Start would skip, not this test
	t.Parallel()
	var pid int
	var hostPort string
	t.Run("test", func(t *testing.T) {
		srv := Start(t)
		pid, hostPort = srv.lk.PID(), strings.TrimPrefix(srv.HTTPURL, "http://")
		if pid == 0 {
			t.Fatal("no server process")
		}
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("server process %d: %v", pid, err)
		}
		if !strings.HasPrefix(srv.URL, "ws://127.0.0.1:") || srv.APIKey == "" || len(srv.APISecret) < 32 {
			t.Fatalf("URL %q, key %q, secret of %d characters", srv.URL, srv.APIKey, len(srv.APISecret))
		}
	})
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("server process %d after the test: %v, want no such process", pid, err)
	}
	if c, err := net.DialTimeout("tcp", hostPort, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after the test", hostPort)
	}
}

// failedTB is a test that has failed, whose cleanups run when asked and
// whose log is recorded.
type failedTB struct {
	testing.TB
	cleanups []func()
	logs     []string
}

func (f *failedTB) Helper()           {}
func (f *failedTB) Failed() bool      { return true }
func (f *failedTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *failedTB) Log(args ...any)   { f.logs = append(f.logs, fmt.Sprint(args...)) }
func (f *failedTB) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

func (f *failedTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// When the test failed, the end of the server's output is logged after
// the server stopped.
func TestStartLogsServerOutputOfFailedTest(t *testing.T) {
	t.Parallel()
	ft := &failedTB{TB: t}
	srv := Start(ft)
	pid := srv.lk.PID()
	ft.runCleanups()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("server process %d after the cleanups: %v", pid, err)
	}
	logged := strings.Join(ft.logs, "\n")
	if !strings.Contains(logged, "end of livekit-server output ("+srv.URL+")") || !strings.Contains(logged, "starting LiveKit server") {
		t.Fatalf("log of the failed test:\n%s\nwant the end of the server's output", logged)
	}
}
