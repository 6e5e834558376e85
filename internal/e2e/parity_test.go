//go:build linux

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/racebuild"
)

// A job that ends itself with j.Shutdown from its participant entrypoint
// after its caller left, while an observer stays in the room, ends the
// same in process and in a job process: "job finished", with the same
// attributes, each once, and recorded by the server as JS_SUCCESS. The race that made it "job terminated by server"
// in a job process (the server's termination overtaking the job's own end)
// did not show in these runs; worker's TestExecutorParity forces it with
// the fake server.
func TestShutdownAfterCallerLeftSameInBothExecutors(t *testing.T) {
	if testing.Short() {
		t.Skip("real LiveKit server")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "parityagent")
	args := []string{"build"}
	if racebuild.Enabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, "-o", bin, "github.com/lkagent/lkagent/internal/e2e/parityagent")...).CombinedOutput(); err != nil {
		t.Fatalf("build the parity agent: %v\n%s", err, out)
	}
	type end struct {
		msg    string
		keys   []string
		server string // the status the server recorded
	}
	run := func(t *testing.T, procs bool) end {
		agent := uniq("parity")
		argv := []string{"--agent-name", agent}
		if procs {
			argv = append(argv, "--processes")
		}
		cmd := exec.Command(bin, argv...)
		cmd.Env = append(os.Environ(), "LIVEKIT_URL="+srv.URL(), "LIVEKIT_API_KEY="+srv.APIKey(), "LIVEKIT_API_SECRET="+srv.APISecret())
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
		out := newLineLog(stderr)
		out.wait(t, 30*time.Second, "msg=registered")
		lkserver.AwaitRouting()

		room := uniq("room")
		caller := joinCaller(t, srv, room, "caller")
		joinCaller(t, srv, room, "observer")
		createDispatch(t, agent, room, "")
		out.wait(t, 30*time.Second, `msg="job started"`, "room="+room)
		// The agent is in the room once the server lists it there.
		waitFor(t, 30*time.Second, "the agent in the room", func() bool { return agentCount(t, room) == 1 })
		caller.Disconnect()
		var line string
		waitFor(t, 30*time.Second, "the job's end line", func() bool {
			for _, msg := range []string{`msg="job finished"`, `msg="job failed"`, `msg="job terminated by server"`} {
				if l := firstLine(out, msg, "room="+room); l != "" {
					line = l
					return true
				}
			}
			return false
		})
		msg := regexp.MustCompile(`msg="([^"]*)"`).FindStringSubmatch(line)[1]
		var keys []string
		for _, m := range regexp.MustCompile(`(?:^|\s)([a-z_]+)=`).FindAllStringSubmatch(line, -1) {
			if slices.Contains(keys, m[1]) {
				t.Errorf("key %s twice in %s", m[1], line)
			}
			keys = append(keys, m[1])
		}
		slices.Sort(keys)
		t.Logf("processes=%v: %s", procs, line)
		id := regexp.MustCompile(`job_id=(\S+)`).FindStringSubmatch(line)[1]
		recorded := waitServerLine(t, 30*time.Second, "job ended", id)
		server := regexp.MustCompile(`"status": "([A-Z_]+)"`).FindStringSubmatch(recorded)
		if server == nil {
			t.Fatalf("no status in the server's line %s", recorded)
		}
		return end{msg: msg, keys: keys, server: server[1]}
	}
	in, proc := run(t, false), run(t, true)
	if in.msg != "job finished" || in.server != "JS_SUCCESS" {
		t.Errorf("in process the job ended with %q, recorded %s; want \"job finished\", JS_SUCCESS", in.msg, in.server)
	}
	if in.msg != proc.msg || !slices.Equal(in.keys, proc.keys) || in.server != proc.server {
		t.Errorf("the job ended differently: in process %+v, in a job process %+v", in, proc)
	}
}

// agentCount is how many agents the server lists in room.
func agentCount(t *testing.T, room string) int {
	res, err := roomClient().ListParticipants(t.Context(), &livekit.ListParticipantsRequest{Room: room})
	if err != nil {
		return 0
	}
	n := 0
	for _, p := range res.GetParticipants() {
		if p.GetKind() == livekit.ParticipantInfo_AGENT {
			n++
		}
	}
	return n
}

// firstLine is the first of out's lines that holds every one of parts.
func firstLine(out *lineLog, parts ...string) string {
	for _, l := range strings.Split(out.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return l
		}
	}
	return ""
}
