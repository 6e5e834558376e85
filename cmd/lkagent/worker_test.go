package main

import (
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// 'lkagent worker' takes the dispatches of its deployment only, and drains
// on SIGTERM: it keeps its running job until the job ends, then exits 0.
func TestWorkerTakesItsDeploymentAndDrains(t *testing.T) {
	t.Parallel()
	agent, room, prodRoom := uniq("agent"), uniq("room"), uniq("prod-room")
	w := start(t, srvEnv("LIVEKIT_AGENT_DEPLOYMENT=staging"), "worker", "--agent-name", agent, "--max-jobs", "4")
	w.waitFor(w.stdout, 30*time.Second, "msg=registered", "deployment=staging")
	awaitRouting()

	var d dispatchJSON
	out := cli(t, srvEnv(), "dispatch", "create", "--room", room, "--agent-name", agent, "--deployment", "staging", "--json").mustOK(t).stdout
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatal(err)
	}
	cli(t, srvEnv(), "dispatch", "create", "--room", prodRoom, "--agent-name", agent).mustOK(t)
	line := w.waitFor(w.stdout, 30*time.Second, `msg="job started"`, "room="+room)
	if !strings.Contains(line, "deployment=staging") || !strings.Contains(line, "identity=echo-AJ_") {
		t.Fatalf("job line = %s", line)
	}

	// The server reports the job running on this worker.
	var listed string
	if !within(15*time.Second, func() bool {
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
	w.waitFor(w.stdout, 10*time.Second, "msg=draining", "running_jobs=1")
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
	w.waitFor(w.stdout, time.Second, `msg="worker stopped"`)
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
	w := start(t, srvEnv(), "worker", "--agent-name", agent)
	w.waitFor(w.stdout, 30*time.Second, "msg=registered")
	awaitRouting()
	cli(t, srvEnv(), "dispatch", "create", "--room", room, "--agent-name", agent).mustOK(t)
	w.waitFor(w.stdout, 30*time.Second, `msg="job started"`, "room="+room)

	w.signal(syscall.SIGINT)
	w.waitFor(w.stdout, 10*time.Second, "msg=draining")
	start := time.Now()
	w.signal(syscall.SIGINT)
	if code := w.wait(5 * time.Second); code != exitInterrupted {
		t.Fatalf("exit %d after the second signal, want %d", code, exitInterrupted)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("the second signal took %s to stop the worker", took)
	}
	w.waitFor(w.stderr, time.Second, "a second signal cancelled the running jobs")
	w.waitFor(w.stdout, time.Second, `msg="job failed"`, "room="+room, "worker stopped")
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
	awaitRouting()
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
	w := start(t, srvEnv(), "worker", "--agent-name", agent, "--processes", "--memory-limit-mib", "256")
	w.waitFor(w.stdout, 30*time.Second, "msg=registered")
	line := w.waitFor(w.stdout, 5*time.Second, "serving HTTP endpoints")
	addr := strings.TrimPrefix(strings.Fields(line[strings.Index(line, "addr="):])[0], "addr=")
	awaitRouting()

	var d dispatchJSON
	out := cli(t, srvEnv(), "dispatch", "create", "--room", room, "--agent-name", agent, "--json").mustOK(t).stdout
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatal(err)
	}
	w.waitFor(w.stdout, 30*time.Second, `msg="job started"`, "room="+room)
	resp, err := http.Get("http://" + addr + "/worker")
	if err != nil {
		t.Fatal(err)
	}
	var view struct {
		Jobs []struct {
			Room string `json:"room"`
			Pid  int    `json:"pid"`
			RSS  int64  `json:"rss_bytes"`
		} `json:"jobs"`
	}
	err = json.NewDecoder(resp.Body).Decode(&view)
	resp.Body.Close()
	if err != nil || len(view.Jobs) != 1 {
		t.Fatalf("/worker: %+v, %v; want one job", view, err)
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
	w.waitFor(w.stdout, 30*time.Second, `msg="job ended"`, "room="+room)
	if !within(30*time.Second, func() bool { return syscall.Kill(pid, 0) != nil }) {
		t.Fatalf("the job's process %d is still there after its job ended", pid)
	}
	w.signal(syscall.SIGTERM)
	if code := w.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
}
