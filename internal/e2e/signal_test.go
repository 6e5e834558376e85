package e2e

import (
	"errors"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/worker"
)

// A program built on worker.RunUntilSignal (the deployments example): the
// first SIGTERM drains and the job goes on; the second cancels it, the
// process exits 130 within seconds, and the server records the job's end
// that the worker reported (JS_FAILED, "worker stopped"), not one of its
// own.
func TestSecondSIGTERMCancelsAndReports(t *testing.T) {
	if testing.Short() {
		t.Skip("real LiveKit server")
	}
	t.Parallel()
	agent := uniq("sig2")
	p := startExample(t, "github.com/lkagent/lkagent/examples/deployments", "--agent-name", agent, "--deployment", "staging", "--drain-timeout", "10m")
	cmd, out, exited := p.cmd, p.out, p.exited
	out.wait(t, 30*time.Second, "serving")
	lkserver.AwaitRouting()

	room := uniq("room")
	d := createDispatch(t, agent, room, "staging")
	var jobID string
	waitFor(t, 30*time.Second, "the job's agent active in its room", func() bool {
		var ok bool
		jobID, ok = joinedJob(t, d)
		return ok
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	out.wait(t, 10*time.Second, "signal received: draining")
	out.wait(t, 10*time.Second, "msg=draining", "running_jobs=1")
	select {
	case <-exited:
		t.Fatalf("the process exited (%v) on the first SIGTERM with its job running; output:\n%s", p.waitErr, out.String())
	case <-time.After(time.Second):
	}
	second := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("the process did not exit within 15s of the second SIGTERM; output:\n%s", out.String())
	}
	took := time.Since(second)
	t.Logf("second SIGTERM to exit: %s", took.Round(time.Millisecond))
	var ee *exec.ExitError
	if !errors.As(p.waitErr, &ee) || ee.ExitCode() != worker.ExitInterrupted {
		t.Fatalf("exit %v after the second SIGTERM, want status %d; output:\n%s", p.waitErr, worker.ExitInterrupted, out.String())
	}
	<-out.done // the output is complete
	if !out.find("echo agent joined the room", "job_id="+jobID, "room="+room) {
		t.Errorf("no line of the agent joining its room with its job:\n%s", out.String())
	}
	line := waitServerLine(t, 30*time.Second, "job ended", jobID)
	for _, want := range []string{"JS_FAILED", "worker stopped"} {
		if !regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(line) {
			t.Errorf("the server recorded %s; want %q in it\n%s", line, want, out.String())
		}
	}
}
