package main

import (
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
	"github.com/lkagent/lkagent/internal/testkit/wait"
)

// 'lkagent worker' takes the dispatches of its deployment only, and drains
// on SIGTERM: it keeps its running job until the job ends, then exits 0.
func TestWorkerTakesItsDeploymentAndDrains(t *testing.T) {
	t.Parallel()
	agent, room, prodRoom := uniq("agent"), uniq("room"), uniq("prod-room")
	w, addr := startWorkerCmd(t, srvEnv("LIVEKIT_AGENT_DEPLOYMENT=staging"), "--agent-name", agent, "--max-jobs", "4")
	if v := w.view(addr); v.Deployment != "staging" {
		t.Fatalf("/worker: deployment %q, want staging", v.Deployment)
	}
	lkserver.AwaitRouting()

	var d dispatchJSON
	out := cli(t, srvEnv(), "dispatch", "create", "--room", room, "--agent-name", agent, "--deployment", "staging", "--json").mustOK(t).stdout
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatal(err)
	}
	cli(t, srvEnv(), "dispatch", "create", "--room", prodRoom, "--agent-name", agent).mustOK(t)
	w.until(30*time.Second, "job started in "+room, func() bool { return w.view(addr).started(room) })

	// The server reports the job running on this worker.
	var listed string
	if !wait.Within(15*time.Second, func() bool {
		var list []dispatchJSON
		listed = cli(t, srvEnv(), "dispatch", "list", "--room", room, "--json").mustOK(t).stdout
		if err := json.Unmarshal([]byte(listed), &list); err != nil {
			t.Fatal(err)
		}
		for _, x := range list {
			if x.ID == d.ID && len(x.Jobs) == 1 && x.Jobs[0].Status == "RUNNING" && x.Jobs[0].Deployment == "staging" &&
				strings.HasPrefix(x.Jobs[0].WorkerID, "AW_") && strings.HasPrefix(x.Jobs[0].ParticipantIdentity, "echo-") {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("the server never listed the job running:\n%s", listed)
	}

	w.signal(syscall.SIGTERM)
	w.until(10*time.Second, "drain with the job running", func() bool {
		v := w.view(addr)
		return v.Draining && len(v.Jobs) == 1
	})
	select {
	case <-w.done:
		t.Fatal("the worker exited with a job running instead of draining")
	case <-time.After(500 * time.Millisecond):
	}
	// Deleting the dispatch terminates the job; the drained worker exits 0.
	cli(t, srvEnv(), "dispatch", "delete", "--room", room, "--id", d.ID).mustOK(t)
	if code := w.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after the drain, want 0", code)
	}
	// The output is complete: the lines the worker logged on the way.
	w.mustLine(w.stdout, "msg=registered", "deployment=staging")
	if line := w.mustLine(w.stdout, `msg="job started"`, "room="+room); !strings.Contains(line, "deployment=staging") || !strings.Contains(line, "identity=echo-AJ_") {
		t.Fatalf("job line = %s", line)
	}
	w.mustLine(w.stdout, "msg=draining", "running_jobs=1")
	w.mustLine(w.stdout, `msg="worker stopped"`)
	if _, ok := w.stdout.Line("room=" + prodRoom); ok {
		t.Fatal("the staging worker saw the production dispatch")
	}
	if strings.Contains(w.stdout.String()+w.stderr.String(), srv.APISecret()) {
		t.Fatal("the worker logged the API secret")
	}
	// The job joined its room: the SDK's and pion's lines went to the
	// worker's logger, none to stderr.
	if e := w.stderr.String(); e != "" {
		t.Fatalf("stderr is not empty after a job in a room:\n%s", e)
	}
}

// A second signal does not wait for the drain: it cancels the running job
// with "worker stopped", whose end is still reported, and exits 130.
func TestWorkerSecondSignalExitsAtOnce(t *testing.T) {
	t.Parallel()
	agent, room := uniq("agent"), uniq("room")
	w, addr := startWorkerCmd(t, srvEnv(), "--agent-name", agent)
	lkserver.AwaitRouting()
	cli(t, srvEnv(), "dispatch", "create", "--room", room, "--agent-name", agent).mustOK(t)
	w.until(30*time.Second, "job started in "+room, func() bool { return w.view(addr).started(room) })

	w.signal(syscall.SIGINT)
	w.until(10*time.Second, "drain", func() bool { return w.view(addr).Draining })
	start := time.Now()
	w.signal(syscall.SIGINT)
	if code := w.wait(5 * time.Second); code != exitInterrupted {
		t.Fatalf("exit %d after the second signal, want %d", code, exitInterrupted)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("the second signal took %s to stop the worker", took)
	}
	w.mustLine(w.stdout, `msg="job started"`, "room="+room)
	w.mustLine(w.stdout, "msg=draining")
	w.mustLine(w.stderr, "a second signal cancelled the running jobs")
	w.mustLine(w.stdout, `msg="job failed"`, "room="+room, "worker stopped")
}

// The worker serves its HTTP endpoints by default; without running jobs a
// signal stops it at once, with status 0.
func TestWorkerIdleStop(t *testing.T) {
	t.Parallel()
	w := start(t, srvEnv(), "worker", "--agent-name", uniq("agent"))
	w.waitFor(w.stdout, 30*time.Second, "msg=registered")
	line := w.waitFor(w.stdout, 5*time.Second, "serving HTTP endpoints")
	addr := strings.TrimPrefix(strings.Fields(line[strings.Index(line, "addr="):])[0], "addr=")
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz on %s: %v", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz = %d while registered", resp.StatusCode)
	}
	lkserver.AwaitRouting()
	w.signal(syscall.SIGTERM)
	if code := w.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
}

// 'lkagent worker --processes' runs each job in a process of its own: a
// second lkagent, which the worker lists in /worker, and which is gone once
// the job ended.
func TestWorkerRunsJobsInProcesses(t *testing.T) {
	t.Parallel()
	agent, room := uniq("agent"), uniq("room")
	w, addr := startWorkerCmd(t, srvEnv(), "--agent-name", agent, "--processes", "--memory-limit-mib", "256")
	lkserver.AwaitRouting()

	var d dispatchJSON
	out := cli(t, srvEnv(), "dispatch", "create", "--room", room, "--agent-name", agent, "--json").mustOK(t).stdout
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatal(err)
	}
	var view workerView
	w.until(30*time.Second, "job started in "+room, func() bool { view = w.view(addr); return view.started(room) })
	if len(view.Jobs) != 1 {
		t.Fatalf("/worker: %+v; want one job", view)
	}
	pid := view.Jobs[0].Pid
	if pid <= 0 || pid == w.cmd.Process.Pid || view.Jobs[0].RSS <= 0 {
		t.Fatalf("/worker lists the job with pid %d and RSS %d, want a process of its own (the worker is %d)", pid, view.Jobs[0].RSS, w.cmd.Process.Pid)
	}
	if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err == nil && exe != lkagentBin {
		t.Fatalf("the job's process runs %s, want %s", exe, lkagentBin)
	}

	// The job ends with its dispatch; its process with it.
	cli(t, srvEnv(), "dispatch", "delete", "--room", room, "--id", d.ID).mustOK(t)
	w.until(30*time.Second, "end of the job on /worker", func() bool { return len(w.view(addr).Jobs) == 0 })
	if !wait.Within(30*time.Second, func() bool { return syscall.Kill(pid, 0) != nil }) {
		t.Fatalf("the job's process %d is still there after its job ended", pid)
	}
	w.signal(syscall.SIGTERM)
	if code := w.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	w.mustLine(w.stdout, "msg=registered")
	w.mustLine(w.stdout, `msg="job started"`, "room="+room)
	w.mustLine(w.stdout, `msg="job ended"`, "room="+room)
}

// workerView is the part of what 'lkagent worker' serves on /worker that
// these tests read.
type workerView struct {
	Registered bool        `json:"registered"`
	Draining   bool        `json:"draining"`
	Deployment string      `json:"deployment"`
	Jobs       []workerJob `json:"jobs"`
}

// workerJob is a job as /worker lists it.
type workerJob struct {
	Room      string    `json:"room"`
	Identity  string    `json:"identity"`
	StartedAt time.Time `json:"started_at"`
	Pid       int       `json:"pid"`
	RSS       int64     `json:"rss_bytes"`
}

// started reports whether v lists a started job in room.
func (v workerView) started(room string) bool {
	return slices.ContainsFunc(v.Jobs, func(j workerJob) bool { return j.Room == room && !j.StartedAt.IsZero() })
}

// startWorkerCmd runs 'lkagent worker' with args, its HTTP endpoints on a
// free port, and returns once its /worker says it is registered.
func startWorkerCmd(t *testing.T, env []string, args ...string) (*proc, string) {
	t.Helper()
	addr := closedPort(t)
	w := start(t, env, append(append([]string{"worker"}, args...), "--http-addr", addr)...)
	w.until(30*time.Second, "registration on /worker", func() bool { return w.view(addr).Registered })
	return w, addr
}

// view returns what the worker serves on /worker, or the zero view while
// it serves nothing.
func (p *proc) view(addr string) workerView {
	var v workerView
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/worker")
	if err != nil {
		return v
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&v) != nil {
		return workerView{}
	}
	return v
}

// until waits until cond holds, failing the test if the process exits
// first or cond does not hold within d.
func (p *proc) until(d time.Duration, what string, cond func() bool) {
	p.t.Helper()
	if !wait.Within(d, func() bool {
		if !p.running() {
			p.t.Fatalf("lkagent exited (%v) before %s", p.err, what)
		}
		return cond()
	}) {
		p.t.Fatalf("no %s within %s", what, d)
	}
}

// mustLine returns the line of buf with every one of parts, failing the
// test if there is none. For output that is complete: the process exited.
func (p *proc) mustLine(buf *syncbuf.Buffer, parts ...string) string {
	p.t.Helper()
	line, ok := buf.Line(parts...)
	if !ok {
		p.t.Fatalf("no line with %q", parts)
	}
	return line
}
