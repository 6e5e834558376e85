package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/procmem"
	"github.com/lkagent/lkagent/internal/testkit/racebuild"
	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
	"github.com/lkagent/lkagent/internal/testkit/wait"
	"github.com/lkagent/lkagent/worker"
)

// These tests run internal/e2e/procagent, a worker whose jobs misbehave on
// request, as a process with each job in a process of its own, against the
// shared real server.

const procAgentPkg = "github.com/lkagent/lkagent/internal/e2e/procagent"

// procMemoryLimit is the --memory-limit of the agents: 256 MiB, twice that
// under the race detector, where a job process uses about twice the memory.
func procMemoryLimit() string {
	if racebuild.Enabled {
		return "512MiB"
	}
	return "256MiB"
}

// buildProcAgent builds the test agent into a directory of the test's own:
// its path names this test's processes alone (see procAgentPids).
func buildProcAgent(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "procagent")
	args := []string{"build"}
	if racebuild.Enabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "-o", bin, procAgentPkg)...).CombinedOutput()
	if err != nil {
		tb.Fatalf("build the test agent: %v\n%s", err, out)
	}
	return bin
}

// procAgent is a run of the test agent.
type procAgent struct {
	bin      string
	cmd      *exec.Cmd
	stdout   *syncbuf.Buffer // the worker's and its jobs' lines (see procagent)
	stderr   *syncbuf.Buffer // the worker's log
	exited   chan struct{}
	waitErr  error // set before exited is closed
	workerID string
	http     string // base URL of the worker's HTTP endpoints
}

// runProcAgent runs the agent bin with args against srv, and returns once
// it registered. The test's end kills it and every process of bin left.
func runProcAgent(tb testing.TB, bin string, args ...string) *procAgent {
	tb.Helper()
	a := &procAgent{bin: bin, stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, exited: make(chan struct{})}
	a.cmd = exec.Command(bin, args...)
	a.cmd.Env = append(os.Environ(), worker.EnvURL+"="+srv.URL(), worker.EnvAPIKey+"="+srv.APIKey(),
		worker.EnvAPISecret+"="+srv.APISecret())
	a.cmd.Stdout, a.cmd.Stderr = a.stdout, a.stderr
	// Job processes share the agent's output: one left behind must not
	// keep Wait from returning.
	a.cmd.WaitDelay = 5 * time.Second
	if err := a.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		a.waitErr = a.cmd.Wait()
		close(a.exited)
	}()
	tb.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		<-a.exited
		// Job processes die with their parent; make sure of it.
		for _, pid := range procAgentPids(a.bin) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if tb.Failed() {
			tb.Logf("agent stdout:\n%s", a.stdout)
			tb.Logf("agent stderr:\n%s", a.stderr)
		}
	})
	f := procFields(a.waitLine(tb, time.Minute, a.stdout, "registered "))
	a.workerID, a.http = f["worker_id"], "http://"+f["http"]
	lkserver.AwaitRouting()
	return a
}

// waitLine waits for a line of out that contains every one of parts.
func (a *procAgent) waitLine(tb testing.TB, timeout time.Duration, out *syncbuf.Buffer, parts ...string) string {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if line, ok := out.Line(parts...); ok {
			return line
		}
		select {
		case <-a.exited:
			if line, ok := out.Line(parts...); ok {
				return line
			}
			tb.Fatalf("the agent exited (%v) before printing a line with %q", a.waitErr, parts)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no line with %q within %s", parts, timeout)
		}
	}
}

// procFields parses the key=value words of a line.
func procFields(line string) map[string]string {
	m := map[string]string{}
	for _, w := range strings.Fields(line) {
		if k, v, ok := strings.Cut(w, "="); ok {
			m[k] = v
		}
	}
	return m
}

// procJob is a job of the agent that joined its room.
type procJob struct {
	room, identity, id, dispatchID string
	pid                            int
}

// dispatch dispatches a job with meta to a new room and returns the
// dispatch's id.
func (a *procAgent) dispatch(tb testing.TB, agent, room, meta string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d, err := dispatchClient().CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{AgentName: agent, Room: room, Metadata: meta})
	if err != nil {
		tb.Fatalf("CreateDispatch(%s, %q): %v", room, meta, err)
	}
	return d.GetId()
}

// joined waits for the job of room to be in its room.
func (a *procAgent) joined(tb testing.TB, room string) procJob {
	tb.Helper()
	f := procFields(a.waitLine(tb, time.Minute, a.stdout, "job room="+room+" "))
	pid, err := strconv.Atoi(f["pid"])
	if err != nil {
		tb.Fatalf("job line without a pid: %v", f)
	}
	return procJob{room: room, identity: f["identity"], id: f["job_id"], pid: pid}
}

// run dispatches a job with meta to a new room and waits for it to join.
func (a *procAgent) run(tb testing.TB, agent, meta string) procJob {
	tb.Helper()
	room := uniq("room")
	d := a.dispatch(tb, agent, room, meta)
	j := a.joined(tb, room)
	j.dispatchID = d
	return j
}

// procWorkerView is what the agent's /worker endpoint says.
type procWorkerView struct {
	WorkerID   string        `json:"worker_id"`
	Registered bool          `json:"registered"`
	Draining   bool          `json:"draining"`
	Jobs       []procJobView `json:"jobs"`
}

type procJobView struct {
	ID  string `json:"id"`
	Pid int    `json:"pid"`
	RSS int64  `json:"rss_bytes"`
}

func (a *procAgent) procWorker(tb testing.TB) procWorkerView {
	tb.Helper()
	code, body := procGet(tb, a.http+"/worker")
	var v procWorkerView
	if err := json.Unmarshal([]byte(body), &v); code != http.StatusOK || err != nil {
		tb.Fatalf("/worker = %d %q (%v)", code, body, err)
	}
	return v
}

// metric reads a series of the agent's /metrics.
func (a *procAgent) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	_, body := procGet(t, a.http+"/metrics")
	v, _ := metricValue(t, body, name, labels)
	return v
}

func procGet(tb testing.TB, url string) (int, string) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// procAgentPids lists the live processes running bin: the agent and its job
// processes (each test builds bin into a directory of its own).
func procAgentPids(bin string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && strings.TrimSuffix(exe, " (deleted)") == bin {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procAlive says whether a process pid exists (zombies included).
func procAlive(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// Proof 1: two jobs hold their rooms; then one job dies of concurrent map
// writes, one calls os.Exit(3) and one allocates past the memory limit.
// The server records each of the three failed with its cause; the two
// keep their rooms, their processes and their contexts; the worker stays
// registered (once), lists each running job's pid and RSS, and serves a
// new job.
func TestJobProcessesContainFailures(t *testing.T) {
	t.Parallel()
	bin := buildProcAgent(t)
	agent := uniq("procs")
	a := runProcAgent(t, bin, "--agent-name", agent, "--processes", "--memory-limit", procMemoryLimit(), "--idle", "2")

	holders := []procJob{a.run(t, agent, "hold"), a.run(t, agent, "hold")}
	failing := map[string]string{"mapwrites": "concurrent map writes", "exit3": "exited with code 3", "alloc": "memory limit"}
	rooms := map[string]string{}
	for meta := range failing {
		rooms[meta] = uniq("room")
		a.dispatch(t, agent, rooms[meta], meta)
	}
	for meta, cause := range failing {
		j := a.joined(t, rooms[meta])
		line := waitServerLine(t, 2*time.Minute, "job ended", j.id, "JS_FAILED")
		t.Logf("%s: server: %s", meta, line)
		if !strings.Contains(line, cause) {
			t.Errorf("%s: the server's record of the job's end does not give the cause %q: %s", meta, cause, line)
		}
		a.waitLine(t, 30*time.Second, a.stderr, "job process ended without finishing its job", "job_id="+j.id, "agent_name="+agent)
		waitFor(t, 30*time.Second, "the process of job "+meta+" to be gone", func() bool { return !procAlive(j.pid) })
	}
	waitFor(t, 30*time.Second, "the ends counted", func() bool {
		return a.metric(t, "lkagent_jobs_finished_total", map[string]string{"status": "crashed"}) == 2 &&
			a.metric(t, "lkagent_jobs_finished_total", map[string]string{"status": "memory_limit"}) == 1
	})

	for _, h := range holders {
		if !agentInRoom(t, srv, h.room, h.identity) {
			t.Errorf("the holding job's agent %s is no longer in room %s", h.identity, h.room)
		}
		if !procAlive(h.pid) {
			t.Errorf("the holding job's process %d is gone", h.pid)
		}
		if line, ok := a.stdout.Line("cancelled room=" + h.room + " "); ok {
			t.Errorf("a holding job was cancelled: %s", line)
		}
	}
	if n := strings.Count(a.stdout.String(), "registered "); n != 1 || a.metric(t, "lkagent_registrations_total", nil) != 1 {
		t.Errorf("the worker registered %d times, want once", n)
	}
	if v := a.procWorker(t); !v.Registered || v.WorkerID != a.workerID {
		t.Errorf("/worker: registered %v as %s, want registered as %s", v.Registered, v.WorkerID, a.workerID)
	}

	next := a.run(t, agent, "hold")
	running := append(holders, next)
	v := a.procWorker(t)
	if len(v.Jobs) != len(running) {
		t.Fatalf("/worker lists %d jobs, want %d: %+v", len(v.Jobs), len(running), v.Jobs)
	}
	for _, j := range running {
		i := slices.IndexFunc(v.Jobs, func(s procJobView) bool { return s.ID == j.id })
		switch {
		case i < 0:
			t.Errorf("/worker does not list job %s", j.id)
		case v.Jobs[i].Pid != j.pid || v.Jobs[i].RSS <= 0:
			t.Errorf("/worker lists job %s with pid %d and RSS %d, want pid %d and an RSS", j.id, v.Jobs[i].Pid, v.Jobs[i].RSS, j.pid)
		default:
			t.Logf("job %s: pid %d, RSS %.1f MiB", j.id, j.pid, float64(v.Jobs[i].RSS)/(1<<20))
		}
	}
}

// The SDK's process-wide lines (pion's, beneath a job's peer connection)
// of a job process reach the worker's logger as records of that job, not
// as raw lines on the process's stderr, where they would fill the tail
// that a crash report carries.
func TestJobProcessSDKLinesAreTheJobs(t *testing.T) {
	t.Parallel()
	bin := buildProcAgent(t)
	agent := uniq("procsdk")
	a := runProcAgent(t, bin, "--agent-name", agent, "--processes", "--debug")
	j := a.run(t, agent, "hold")
	line := a.waitLine(t, 30*time.Second, a.stderr, "sdk=pion.", "job_id="+j.id)
	t.Logf("a pion line of job %s: %s", j.id, line)
	if stray, ok := a.stderr.Line("job process stderr", "sdk=pion"); ok {
		t.Errorf("pion's lines reach the worker as the job process's stderr: %s", stray)
	}
}

// Proof 2: SIGTERM with 3 jobs running, each in its process: the worker
// drains, letting the jobs run until their calls end (their rooms are
// deleted), then exits 0, and none of its processes is left.
func TestSIGTERMDrainsJobProcesses(t *testing.T) {
	t.Parallel()
	bin := buildProcAgent(t)
	agent := uniq("procdrain")
	a := runProcAgent(t, bin, "--agent-name", agent, "--processes", "--memory-limit", procMemoryLimit(), "--drain-timeout", "2m")
	jobs := []procJob{a.run(t, agent, "hold"), a.run(t, agent, "hold"), a.run(t, agent, "hold")}
	var pids []int
	waitFor(t, 30*time.Second, "/worker to list the 3 jobs with their pids", func() bool {
		pids = pids[:0]
		for _, j := range a.procWorker(t).Jobs {
			if j.Pid > 0 {
				pids = append(pids, j.Pid)
			}
		}
		return len(pids) == len(jobs)
	})
	for _, j := range jobs {
		if !slices.Contains(pids, j.pid) {
			t.Fatalf("/worker lists pids %v, not %d of job %s", pids, j.pid, j.id)
		}
	}
	procs := procAgentPids(a.bin) // the agent, its job processes and its warm ones
	t.Logf("processes of the agent before SIGTERM: %v (job processes %v)", procs, pids)

	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "/worker draining with the 3 jobs", func() bool {
		v := a.procWorker(t)
		return v.Draining && len(v.Jobs) == 3
	})
	select {
	case <-a.exited:
		t.Fatalf("the agent exited (%v) while its jobs ran", a.waitErr)
	case <-time.After(time.Second):
	}
	for _, j := range jobs {
		if !procAlive(j.pid) || !agentInRoom(t, srv, j.room, j.identity) {
			t.Fatalf("job %s lost its process or its room during the drain", j.id)
		}
	}
	// The calls end: each job finishes on its own.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, j := range jobs {
		if _, err := roomClient().DeleteRoom(ctx, &livekit.DeleteRoomRequest{Room: j.room}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-a.exited:
	case <-time.After(time.Minute):
		t.Fatal("the agent did not exit within a minute of its jobs' end")
	}
	if a.waitErr != nil {
		t.Fatalf("the agent exited with %v, want 0", a.waitErr)
	}
	for _, j := range jobs {
		if line, ok := a.stdout.Line("cancelled room=" + j.room + " "); !ok || !strings.Contains(line, "disconnected from the room") {
			t.Errorf("job %s did not end with its room: %q", j.id, line)
		}
	}
	if _, ok := a.stderr.Line(`msg=draining`, "running_jobs=3"); !ok {
		t.Error("the agent did not log its drain with the 3 jobs running")
	}
	if _, ok := a.stderr.Line("drain timeout"); ok {
		t.Error("the drain timed out")
	}
	for _, pid := range procs {
		if procAlive(pid) {
			t.Errorf("process %d of the agent is left after it exited", pid)
		}
	}
	if left := procAgentPids(a.bin); len(left) > 0 {
		t.Errorf("processes of the agent left after it exited: %v", left)
	}
}

// Proof 3: a job that ignores its termination (the server's, after
// DeleteDispatch) is killed ShutdownTimeout later: its process is gone, the
// worker logs and counts the kill, and its slot serves the next job.
func TestJobProcessIgnoringTerminationIsKilled(t *testing.T) {
	t.Parallel()
	bin := buildProcAgent(t)
	agent := uniq("prochang")
	const shutdown = 2 * time.Second
	a := runProcAgent(t, bin, "--agent-name", agent, "--processes", "--memory-limit", procMemoryLimit(),
		"--shutdown-timeout", shutdown.String(), "--max-jobs", "1")
	j := a.run(t, agent, "hang")
	if v := a.procWorker(t); len(v.Jobs) != 1 || v.Jobs[0].Pid != j.pid {
		t.Fatalf("/worker lists %+v, want job %s with pid %d", v.Jobs, j.id, j.pid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	terminated := time.Now()
	if _, err := dispatchClient().DeleteDispatch(ctx, &livekit.DeleteAgentDispatchRequest{DispatchId: j.dispatchID, Room: j.room}); err != nil {
		t.Fatal(err)
	}
	a.waitLine(t, 30*time.Second, a.stdout, "cancelled room="+j.room+" ", "terminated by server")
	seen := time.Now()
	waitFor(t, 30*time.Second, "the hanging job's process to be killed", func() bool { return !procAlive(j.pid) })
	took := time.Since(terminated)
	// The server takes a few seconds to pass DeleteDispatch on to the
	// worker: the kill is ShutdownTimeout after the job saw it.
	t.Logf("killed %s after DeleteDispatch, %s after the job saw its termination (ShutdownTimeout %s)",
		took.Round(time.Millisecond), time.Since(seen).Round(time.Millisecond), shutdown)
	if took < shutdown {
		t.Errorf("killed %s after the termination, before ShutdownTimeout (%s)", took, shutdown)
	}
	line := a.waitLine(t, 30*time.Second, a.stderr, "job process ended without finishing its job", "job_id="+j.id)
	if !strings.Contains(line, "killed") || !strings.Contains(line, "pid="+strconv.Itoa(j.pid)) {
		t.Errorf("the worker's log of the end does not say the process was killed: %s", line)
	}
	waitFor(t, 30*time.Second, "the kill counted", func() bool {
		return a.metric(t, "lkagent_jobs_finished_total", map[string]string{"status": "killed"}) == 1
	})
	if v := a.procWorker(t); len(v.Jobs) != 0 {
		t.Fatalf("/worker still lists %+v", v.Jobs)
	}
	a.run(t, agent, "ok") // the one slot is free again
}

// Proof 4: a binary whose job processes cannot start: the worker says on
// /readyz that it is full and why, and the dispatches go to a healthy
// worker of the same agent instead.
func TestUnstartableJobProcessesMakeWorkerFull(t *testing.T) {
	t.Parallel()
	bin := buildProcAgent(t)
	agent := uniq("procfull")
	a := runProcAgent(t, bin, "--agent-name", agent, "--processes", "--fail-job-processes")
	var code int
	var body string
	waitFor(t, time.Minute, "/readyz to say the worker is full", func() bool {
		code, body = procGet(t, a.http+"/readyz")
		return code == http.StatusServiceUnavailable
	})
	t.Logf("/readyz = %d %q", code, strings.TrimSpace(body))
	if !strings.Contains(body, "full") || !strings.Contains(body, "job processes cannot start") ||
		!strings.Contains(body, "this job process cannot start") {
		t.Errorf("/readyz = %q, want it to say the worker is full because job processes cannot start, with their stderr", body)
	}
	healthy := newRecorder("", false)
	startWorker(t, worker.Options{AgentName: agent}, healthy.handle)
	for range 3 {
		room := uniq("room")
		a.dispatch(t, agent, room, "ok")
		if r := waitRun(t, 30*time.Second, healthy.runs); r.Room != room {
			t.Fatalf("the dispatch to %s ran in %s", room, r.Room)
		}
	}
	if v := a.procWorker(t); len(v.Jobs) != 0 {
		t.Errorf("the full worker runs %+v", v.Jobs)
	}
	if n := a.metric(t, "lkagent_offers_accepted_total", nil); n != 0 {
		t.Errorf("the full worker accepted %v offers", n)
	}
	t.Logf("the full worker received %v offers and declined %v", a.metric(t, "lkagent_offers_received_total", nil),
		a.metric(t, "lkagent_offers_declined_total", nil))
	if line, ok := a.stdout.Line("job room="); ok {
		t.Errorf("a job ran on the full worker: %s", line)
	}
}

// meanMem is the mean memory of pids, in MiB.
func meanMem(tb testing.TB, pids []int) (rss, pss, anon float64) {
	tb.Helper()
	ms := make([]procmem.Mem, len(pids))
	for i, pid := range pids {
		m, err := procmem.Read(pid)
		if err != nil {
			tb.Fatal(err)
		}
		ms[i] = m
	}
	m := procmem.Mean(ms)
	return float64(m.RSS) / (1 << 20), float64(m.PSS) / (1 << 20), float64(m.Anon) / (1 << 20)
}

// BenchmarkJobProcessMemory measures the resident memory of the test
// agent's job processes against the real server: of warm processes
// waiting for a job (--idle 4), and of processes whose job is in its room
// (10 jobs at once, each holding its room with a WebRTC connection). RSS
// counts the pages of the executable that all the processes of one binary
// share; PSS divides those among them; anon is each process's own memory.
// worker-RSS-MiB is the worker's own process with the 10 jobs running.
//
//	go test -run '^$' -bench JobProcessMemory -benchtime 1x ./internal/e2e/
func BenchmarkJobProcessMemory(b *testing.B) {
	bin := buildProcAgent(b)
	agent := uniq("procmem")
	const idle, jobs = 4, 10
	a := runProcAgent(b, bin, "--agent-name", agent, "--processes", "--idle", strconv.Itoa(idle))
	parent := a.cmd.Process.Pid
	var sums [7]float64
	for range b.N {
		var warm []int
		wait.Until(b, time.Minute, fmt.Sprintf("%d warm job processes", idle), func() bool {
			warm = slices.DeleteFunc(procAgentPids(bin), func(pid int) bool { return pid == parent })
			return len(warm) == idle
		})
		time.Sleep(2 * time.Second) // ready and settled
		rss, pss, anon := meanMem(b, warm)
		sums[0] += rss
		sums[1] += pss
		sums[2] += anon

		var running []procJob
		for range jobs {
			running = append(running, a.run(b, agent, "hold"))
		}
		time.Sleep(3 * time.Second) // the rooms' connections settle
		pids := make([]int, len(running))
		for i, j := range running {
			pids[i] = j.pid
		}
		rss, pss, anon = meanMem(b, pids)
		sums[3] += rss
		sums[4] += pss
		sums[5] += anon
		pm, _ := procmem.Read(parent)
		sums[6] += float64(pm.RSS) / (1 << 20)
		var reported int64
		for _, j := range a.procWorker(b).Jobs {
			reported += j.RSS
		}
		b.Logf("/worker: %d jobs, mean RSS %.1f MiB", jobs, float64(reported)/jobs/(1<<20))

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		for _, j := range running {
			if _, err := roomClient().DeleteRoom(ctx, &livekit.DeleteRoomRequest{Room: j.room}); err != nil {
				b.Fatal(err)
			}
		}
		cancel()
		wait.Until(b, time.Minute, "end of the jobs after their rooms' deletion", func() bool {
			return len(a.procWorker(b).Jobs) == 0
		})
	}
	n := float64(b.N)
	for i, unit := range []string{"idle-RSS-MiB", "idle-PSS-MiB", "idle-anon-MiB", "room-RSS-MiB", "room-PSS-MiB", "room-anon-MiB", "worker-RSS-MiB"} {
		b.ReportMetric(sums[i]/n, unit)
	}
	b.ReportMetric(0, "ns/op")
}

// A job that ends in a job process is recorded by the server with its own
// outcome, as in process (TestJobEndRecordedWithItsOutcome): the job
// process stays in its room until the worker has written the job's end to
// the server.
func TestJobProcessEndRecordedWithItsOutcome(t *testing.T) {
	t.Parallel()
	bin := buildProcAgent(t)
	agent := uniq("procend")
	a := runProcAgent(t, bin, "--agent-name", agent, "--processes", "--idle", "2")
	rooms := map[string]string{} // room → metadata
	for _, meta := range jobEndCases(6) {
		room := uniq("room")
		rooms[room] = meta
		a.dispatch(t, agent, room, meta)
	}
	jobs := map[string]string{} // job ID → metadata
	for room, meta := range rooms {
		f := procFields(a.waitLine(t, time.Minute, a.stdout, "listed room="+room+" "))
		jobs[f["job_id"]] = meta
	}
	checkRecordedEnds(t, jobs)
	// The worker logs each end as in process.
	for id, meta := range jobs {
		msg := `msg="job finished"`
		if strings.Contains(meta, ":") {
			msg = `msg="job failed"`
		}
		a.waitLine(t, 30*time.Second, a.stderr, msg, "job_id="+id)
	}
}
