// Package extest runs the examples as processes against a real LiveKit
// server, for their tests: it builds an example, starts it with the
// server's connection settings in its environment, and waits for lines of
// its log.
package extest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/lkserver"
	"github.com/lkagent/lkagent/internal/racebuild"
	"github.com/lkagent/lkagent/internal/syncbuf"
)

// Main is the body of an example's TestMain: it builds the example in the
// current directory, starts one LiveKit server for the package's tests, runs
// them and cleans up. It returns the exit code for os.Exit.
func Main(m *testing.M, bin *string, srv **lkserver.Server) int {
	lksdk.SetLogger(lklogger.GetDiscardLogger())
	if lkserver.Short() {
		return lkserver.RunMain(m, lkserver.Options{}, nil) // runs no test
	}
	dir, err := os.MkdirTemp("", "example-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "extest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	*bin = filepath.Join(dir, "example")
	args := []string{"build", "-o", *bin}
	if racebuild.Enabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "extest: go build: %v\n%s", err, out)
		return 1
	}
	return lkserver.RunMain(m, lkserver.Options{}, func(s *lkserver.Server) { *srv = s })
}

// Uniq returns prefix and a random suffix, so tests never share rooms or
// agent names.
func Uniq(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// Env is the environment for an example connecting to srv: this process's
// environment without any LIVEKIT_ variable, plus srv's URL and keys and
// extra ("NAME=value").
func Env(srv *lkserver.Server, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LIVEKIT_") {
			env = append(env, kv)
		}
	}
	env = append(env, "LIVEKIT_URL="+srv.URL(), "LIVEKIT_API_KEY="+srv.APIKey(), "LIVEKIT_API_SECRET="+srv.APISecret())
	return append(env, extra...)
}

// Proc is a running example.
type Proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	log  *syncbuf.Buffer
	done chan struct{}
	err  error
}

// Start starts bin with args and env; it is killed when the test ends if it
// still runs, and its log is shown when the test failed.
func Start(t testing.TB, name, bin string, env []string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, name: name, log: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.log.String())
		}
	})
	return p
}

// Log returns what the process wrote so far.
func (p *Proc) Log() string { return p.log.String() }

// WaitLog waits until the log has a line containing every one of parts and
// returns that line. It fails the test after timeout or if the process
// exits first.
func (p *Proc) WaitLog(timeout time.Duration, parts ...string) string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, line := range strings.Split(p.log.String(), "\n") {
			if containsAll(line, parts) {
				return line
			}
		}
		select {
		case <-p.done:
			p.t.Fatalf("%s exited (%v) before logging a line with %q", p.name, p.err, parts)
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s logged no line with %q within %s", p.name, parts, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// HasLog reports whether a line contains every one of parts.
func (p *Proc) HasLog(parts ...string) bool {
	for _, line := range strings.Split(p.log.String(), "\n") {
		if containsAll(line, parts) {
			return true
		}
	}
	return false
}

// Field returns the value of key=value in a line of slog's text format.
func Field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %s: %v", p.name, err)
	}
}

// Running reports whether the process still runs.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM and returns the exit code, failing the test if the
// process does not exit within timeout.
func (p *Proc) Stop(timeout time.Duration) int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	return p.Wait(timeout)
}

// Wait waits for the process to exit and returns its exit code, failing
// the test after timeout.
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %s", p.name, timeout)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		p.t.Fatalf("%s: %v", p.name, p.err)
	}
	return 0
}

// Dispatch creates a dispatch on srv.
func Dispatch(t testing.TB, srv *lkserver.Server, req *livekit.CreateAgentDispatchRequest) *livekit.AgentDispatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d, err := lksdk.NewAgentDispatchServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret()).CreateDispatch(ctx, req)
	if err != nil {
		t.Fatalf("CreateDispatch(%v): %v", req, err)
	}
	return d
}

// WaitParticipant waits until srv lists identity in room, and returns it.
func WaitParticipant(t testing.TB, srv *lkserver.Server, room, identity string, timeout time.Duration) *livekit.ParticipantInfo {
	t.Helper()
	rooms := lksdk.NewRoomServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret())
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := rooms.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: room})
		cancel()
		if err == nil {
			for _, p := range res.GetParticipants() {
				if p.GetIdentity() == identity {
					return p
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("participant %q never showed up in room %q within %s (last error: %v)", identity, room, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DeleteRoom deletes room on srv: the server disconnects its participants.
func DeleteRoom(t testing.TB, srv *lkserver.Server, room string) {
	t.Helper()
	rooms := lksdk.NewRoomServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rooms.DeleteRoom(ctx, &livekit.DeleteRoomRequest{Room: room}); err != nil {
		t.Fatalf("DeleteRoom(%q): %v", room, err)
	}
}

// Participants lists the identities in room (none if it does not exist).
func Participants(t testing.TB, srv *lkserver.Server, room string) []string {
	t.Helper()
	rooms := lksdk.NewRoomServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := rooms.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: room})
	if err != nil {
		return nil
	}
	var ids []string
	for _, p := range res.GetParticipants() {
		ids = append(ids, p.GetIdentity())
	}
	return ids
}
