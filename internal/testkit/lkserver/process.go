package lkserver

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/lines"
)

// process is one run of a child process.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // result of cmd.Wait; valid after done is closed

	// stopping is set once the parent asked the process to exit, so that
	// an exit is expected rather than a crash.
	stopping atomic.Bool
}

// startProcess starts path with args and env, sending its output to out.
//
// The child is started from a goroutine locked to its OS thread, which stays
// locked until the child exits: on Linux the parent-death signal fires when
// the starting thread exits, and an unlocked thread could be retired by the
// Go runtime while the child still runs.
func startProcess(path string, args, env []string, out io.Writer) (*process, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = sysProcAttr()
	// Do not let a stray grandchild holding the output pipe block Wait.
	cmd.WaitDelay = time.Second

	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	return p, nil
}

// context returns a copy of ctx that is also canceled when the process
// exits. Readiness checks use it so that a check against a port that turned
// out to belong to someone else, whose listener may never answer, is
// abandoned as soon as the child gives up.
func (p *process) context(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// pid returns the process id.
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// terminate asks the process to exit with SIGTERM, repeats the signal after
// repeatAfter (livekit-server drains on the first signal and exits at once
// on the second; 0 disables the repeat), sends SIGKILL after killAfter, and
// waits for the exit.
func (p *process) terminate(repeatAfter, killAfter time.Duration) {
	p.stopping.Store(true)
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	kill := time.NewTimer(killAfter)
	defer kill.Stop()
	var repeat <-chan time.Time
	if repeatAfter > 0 {
		t := time.NewTimer(repeatAfter)
		defer t.Stop()
		repeat = t.C
	}
	for {
		select {
		case <-p.done:
			return
		case <-repeat:
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		case <-kill.C:
			p.kill()
			return
		}
	}
}

// kill sends SIGKILL and waits for the exit.
func (p *process) kill() {
	p.stopping.Store(true)
	// An error means the process is already gone; the wait settles it.
	_ = p.cmd.Process.Kill()
	<-p.done
}

// unexpectedExit returns an error if the process exited on its own with a
// failure status before the parent asked it to stop, and marks the exit as
// reported so that the error is returned only once.
func (p *process) unexpectedExit() error {
	if !p.exited() || p.stopping.Swap(true) || p.err == nil {
		return nil
	}
	return fmt.Errorf("process %d exited unexpectedly: %w", p.pid(), p.err)
}

// logTail is an io.Writer that forwards to an optional writer and keeps the
// last lines written in memory, for error messages. It is safe for
// concurrent use.
type logTail struct {
	mu    sync.Mutex
	fwd   io.Writer
	split *lines.Splitter
	ring  *lines.Ring
}

const (
	tailLines   = 200
	maxLineSize = 16 << 10
)

// newLogTail returns a logTail forwarding to fwd, which may be nil.
func newLogTail(fwd io.Writer) *logTail {
	return &logTail{fwd: fwd, split: lines.NewSplitter(maxLineSize), ring: lines.NewRing(tailLines)}
}

// Write implements io.Writer. Errors from the forward writer are ignored so
// that a failing log sink never blocks or kills the child process.
func (l *logTail) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fwd != nil {
		_, _ = l.fwd.Write(b)
	}
	l.split.Split(b, l.ring.Add)
	return len(b), nil
}

// String returns the retained lines, oldest first, including an incomplete
// last line.
func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ring.String(l.split.Partial())
}

// withLog appends the log tail to err, if there is one.
func withLog(err error, name string, tail *logTail) error {
	s := strings.TrimRight(tail.String(), "\n")
	if s == "" {
		return fmt.Errorf("%w (%s wrote no output)", err, name)
	}
	return fmt.Errorf("%w\n--- last lines of %s output ---\n%s", err, name, s)
}
