package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/racebuild"
	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
	"github.com/lkagent/lkagent/internal/testkit/wait"
)

var (
	// lkagentBin is the CLI built once for all tests.
	lkagentBin string
	// srv is the one LiveKit server the tests share; each test uses rooms
	// and agent names of its own. The demo starts a server of its own.
	srv *lkserver.Server
)

func TestMain(m *testing.M) {
	lksdk.SetLogger(lklogger.GetDiscardLogger())
	if lkserver.Short() {
		// Every test runs the lkagent binary, most against the server.
		os.Exit(lkserver.RunMain(m, lkserver.Options{}, nil))
	}
	dir, err := os.MkdirTemp("", "lkagent-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lkagentBin = filepath.Join(dir, "lkagent")
	args := []string{"build", "-o", lkagentBin}
	if racebuild.Enabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := lkserver.RunMain(m, lkserver.Options{}, func(s *lkserver.Server) { srv = s })
	os.RemoveAll(dir)
	os.Exit(code)
}

// uniq returns prefix plus a random suffix.
func uniq(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// cleanEnv is this process's environment without anything the CLI reads.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LIVEKIT_") && !strings.HasPrefix(kv, "LKAGENT_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// srvEnv is cleanEnv plus the shared server's connection settings.
func srvEnv(extra ...string) []string {
	return cleanEnv(append([]string{
		"LIVEKIT_URL=" + srv.URL(), "LIVEKIT_API_KEY=" + srv.APIKey(), "LIVEKIT_API_SECRET=" + srv.APISecret(),
	}, extra...)...)
}

// runResult is what a finished CLI run produced.
type runResult struct {
	stdout, stderr string
	code           int
}

// cli runs the CLI with env and args and waits for it.
func cli(t *testing.T, env []string, args ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, lkagentBin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := runResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("lkagent %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// mustOK fails the test unless the run exited 0 with nothing on stderr.
func (r runResult) mustOK(t *testing.T) runResult {
	t.Helper()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	return r
}

// mustFail checks the exit code and that stderr is one line "lkagent: ..."
// containing every one of parts, and nothing on stdout.
func (r runResult) mustFail(t *testing.T, code int, parts ...string) {
	t.Helper()
	r.mustFailLogged(t, code, parts...)
	if r.stdout != "" {
		t.Errorf("stdout not empty on error:\n%s", r.stdout)
	}
}

// mustFailLogged is mustFail for a command whose output (on stdout) is a
// log, such as the worker's.
func (r runResult) mustFailLogged(t *testing.T, code int, parts ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	msg := strings.TrimSuffix(r.stderr, "\n")
	if msg == "" || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "lkagent: ") {
		t.Fatalf("stderr is not one line starting with 'lkagent: ':\n%s", r.stderr)
	}
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("error line lacks %q: %s", p, msg)
		}
	}
	if strings.Contains(msg, "goroutine ") || strings.Contains(msg, "panic") {
		t.Errorf("error line looks like a crash: %s", msg)
	}
}

// proc is a CLI process running in the background.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout *syncbuf.Buffer
	stderr *syncbuf.Buffer
	done   chan struct{}
	err    error
}

// start starts the CLI in the background; it is killed at the end of the
// test if it still runs, and its output logged if the test failed.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(lkagentBin, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if p.running() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("lkagent %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), p.stdout, p.stderr)
		}
	})
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal: %v", err)
	}
}

// wait waits for the exit and returns the exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("lkagent did not exit within %s", timeout)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		p.t.Fatal(p.err)
	}
	return 0
}

// waitFor waits until buf has a line containing every one of parts, and
// returns it.
func (p *proc) waitFor(buf *syncbuf.Buffer, timeout time.Duration, parts ...string) string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if line, ok := buf.Line(parts...); ok {
			return line
		}
		if !p.running() {
			if line, ok := buf.Line(parts...); ok {
				return line
			}
			p.t.Fatalf("lkagent exited (%v) before writing a line with %q", p.err, parts)
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no line with %q within %s", parts, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// pidRe finds "pid N" in output.
var pidRe = regexp.MustCompile(`\(pid (\d+)\)`)

// assertGone fails if the process pid still exists.
func assertGone(t *testing.T, pid int) {
	t.Helper()
	var err error
	if !wait.Within(5*time.Second, func() bool { err = syscall.Kill(pid, 0); return errors.Is(err, syscall.ESRCH) }) {
		t.Fatalf("process %d is still there (%v)", pid, err)
	}
}

// serverPID returns the pid the output reports for the LiveKit server.
func serverPID(t *testing.T, out string) int {
	t.Helper()
	m := pidRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no server pid in the output:\n%s", out)
	}
	pid, _ := strconv.Atoi(m[1])
	return pid
}
