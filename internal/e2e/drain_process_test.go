package e2e

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/worker"
)

// lineLog collects a process's output lines and lets a test wait for one.
type lineLog struct {
	mu    sync.Mutex
	lines []string
	added chan struct{}
	done  chan struct{} // closed when the output has ended
}

func newLineLog(r io.Reader) *lineLog {
	l := &lineLog{added: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			l.mu.Unlock()
			select {
			case l.added <- struct{}{}:
			default:
			}
		}
	}()
	return l
}

// exampleProc is an example program the test built and started against
// srv, its stderr read line by line.
type exampleProc struct {
	cmd     *exec.Cmd
	out     *lineLog
	exited  chan struct{} // closed once it exited; then waitErr is set
	waitErr error
}

// startExample builds the example package pkg, starts it with args
// against srv, and kills it when the test ends if it still runs.
func startExample(t *testing.T, pkg string, args ...string) *exampleProc {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	build := exec.Command("go", "build", "-o", bin, pkg)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	p := &exampleProc{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "LIVEKIT_URL="+srv.URL(), "LIVEKIT_API_KEY="+srv.APIKey(), "LIVEKIT_API_SECRET="+srv.APISecret())
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.out = newLineLog(stderr)
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

func (l *lineLog) find(substrs ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		all := true
		for _, s := range substrs {
			all = all && strings.Contains(line, s)
		}
		if all {
			return true
		}
	}
	return false
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func (l *lineLog) wait(t *testing.T, timeout time.Duration, substrs ...string) {
	t.Helper()
	deadline := time.After(timeout)
	for !l.find(substrs...) {
		select {
		case <-l.added:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no output line with %q within %s; output:\n%s", substrs, timeout, l.String())
		}
	}
}

// SIGTERM during a rollout: the worker process (the deployments example)
// drains. Its running job finishes on its own within the drain timeout, new
// staging dispatches meanwhile go to the other staging worker, and the
// process exits 0.
func TestSIGTERMDrainsWorkerProcess(t *testing.T) {
	t.Parallel()
	agent := uniq("rollout")
	p := startExample(t, "github.com/lkagent/lkagent/examples/deployments", "--agent-name", agent, "--deployment", "staging", "--drain-timeout", "60s")
	cmd, out, exited := p.cmd, p.out, p.exited
	out.wait(t, 30*time.Second, "serving")
	lkserver.AwaitRouting()

	room := uniq("room")
	d := createDispatch(t, agent, room, "staging")
	waitFor(t, 30*time.Second, "the job's agent active in its room", func() bool { _, ok := joinedJob(t, d); return ok })

	other := newRecorder("staging", true)
	startWorker(t, worker.Options{AgentName: agent, Deployment: "staging"}, other.handle)

	sigterm := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	out.wait(t, 10*time.Second, "draining")
	for range 3 {
		r := uniq("room")
		createDispatch(t, agent, r, "staging")
		if got := waitRun(t, 20*time.Second, other.runs); got.Room != r {
			t.Fatalf("dispatch during the drain ran as %+v", got)
		}
	}
	select {
	case <-exited:
		t.Fatalf("the process exited (%v) while its job was still running; output:\n%s", p.waitErr, out.String())
	default:
	}

	// The call ends: the room goes away and the job finishes on its own.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := roomClient().DeleteRoom(ctx, &livekit.DeleteRoomRequest{Room: room}); err != nil {
		t.Fatal(err)
	}
	ended := time.Now()
	select {
	case <-exited:
		var ee *exec.ExitError
		if errors.As(p.waitErr, &ee) {
			t.Fatalf("the process exited with %v after draining; output:\n%s", p.waitErr, out.String())
		}
		if p.waitErr != nil {
			t.Fatal(p.waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the process did not exit within 30s after its job ended; output:\n%s", out.String())
	}
	t.Logf("drain: SIGTERM to exit %s; job end to exit %s", time.Since(sigterm).Round(time.Millisecond), time.Since(ended).Round(time.Millisecond))
	select {
	case <-out.done: // the last lines have arrived
	case <-time.After(10 * time.Second):
		t.Fatal("the process's output did not end within 10s of its exit")
	}
	if out.find("drain timeout") {
		t.Fatalf("the job was cancelled by the drain timeout instead of finishing:\n%s", out.String())
	}
	if !out.find("echo agent joined the room", room) {
		t.Fatalf("the agent did not log joining its room:\n%s", out.String())
	}
	if !out.find("drained; exiting") {
		t.Fatalf("the process did not report a finished drain:\n%s", out.String())
	}
}
