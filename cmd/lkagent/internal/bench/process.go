package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/jobproc"
	"github.com/lkagent/lkagent/internal/testkit/procmem"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// With Config.Processes the workers run each job in a process of its own:
// the program that calls Run is started again for each job, with the same
// arguments, and its main must call ServeJobProcess first thing (see
// IsJobProcess). The job process builds a worker with the same handler,
// whose Run serves the job. The bench learns of each start from the
// parent worker's EventStarted (see recordStarts), and of each room joined
// from a log record, which reaches the parent's worker logger (see
// startTap). The handler learns from the dispatch's metadata whether to
// join its room and how long to stay: while the bench's observer is in the
// room, or, for the jobs held to measure memory, until the bench releases
// them by creating a file of the hold's name in a directory of its own.

// envJobProcess marks the job processes of the bench's workers; the
// parent sets it in their environment only.
const envJobProcess = "LKAGENT_BENCH_JOB_PROCESS"

// envReleaseDir names the directory whose files release held jobs.
const envReleaseDir = "LKAGENT_BENCH_RELEASE_DIR"

// What a job of a process-mode bench does, from its dispatch's metadata.
const (
	metaJoin = "join"  // join the room
	metaHold = "hold=" // + a name: stay until released (else: while observed)
)

// The handler's records: its room joined, or not. (Its start reaches the
// bench as the worker's EventStarted.)
const (
	joinedMsg     = "bench job joined"
	joinFailedMsg = "bench job could not join its room"
)

// processShutdownTimeout is the bench workers' ShutdownTimeout.
const processShutdownTimeout = 5 * time.Second

// IsJobProcess says whether this process is a job process of a bench run
// with Config.Processes. Its main must then call ServeJobProcess before
// anything else.
func IsJobProcess() bool { return jobproc.IsChild() && os.Getenv(envJobProcess) != "" }

// ServeJobProcess serves the one job of a bench worker's job process and
// exits the process.
func ServeJobProcess() {
	w, err := worker.New(processOptions(), processHandler)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench job process:", err)
		os.Exit(2)
	}
	err = w.Run(context.Background()) // serves the job, then returns ErrJobProcessDone
	if errors.Is(err, worker.ErrJobProcessDone) {
		os.Exit(worker.ExitCode(err))
	}
	fmt.Fprintln(os.Stderr, "bench job process: the worker did not serve the job:", err)
	os.Exit(2)
}

// processOptions are the options a process-mode bench worker and its job
// processes share; the connection comes from the environment in job
// processes (see jobProcessEnv).
func processOptions() worker.Options {
	return worker.Options{
		AgentName:       os.Getenv(envJobProcess),
		Executor:        worker.Processes(worker.ProcessOptions{}),
		ShutdownTimeout: processShutdownTimeout,
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// jobProcessEnv is the environment the bench's job processes get: the
// mark, which carries the agent name, the connection, and where releases
// appear.
func (b *bench) jobProcessEnv() []string {
	c := &b.cfg
	return []string{envJobProcess + "=" + c.AgentName, worker.EnvURL + "=" + c.URL,
		worker.EnvAPIKey + "=" + c.APIKey, worker.EnvAPISecret + "=" + c.APISecret, envReleaseDir + "=" + b.releaseDir}
}

// processHandler runs in a job process: it joins the room if told to, and
// stays as the metadata says.
func processHandler(ctx context.Context, j *job.Job) error {
	var join bool
	var hold string
	for _, w := range strings.Split(j.Metadata(), ",") {
		if w == metaJoin {
			join = true
		} else if name, ok := strings.CutPrefix(w, metaHold); ok {
			hold = name
		}
	}
	var room *lksdk.Room
	if join {
		r, err := j.Connect(ctx, nil)
		if err != nil {
			j.Logger().Warn(joinFailedMsg, slog.Any("error", err))
			return err
		}
		room = r
		j.Logger().Info(joinedMsg)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		switch {
		case hold != "":
			if _, err := os.Stat(filepath.Join(os.Getenv(envReleaseDir), hold)); err == nil {
				return nil
			}
		case room != nil:
			// Stay while someone other than agents is in the room: the
			// bench's observer leaves once it saw the agent.
			if !observed(room) {
				return nil
			}
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// observed says whether anyone but agents is in room.
func observed(room *lksdk.Room) bool {
	for _, p := range room.GetRemoteParticipants() {
		if p.Kind() != lksdk.ParticipantAgent {
			return true
		}
	}
	return false
}

// dispatchMeta is the metadata of a dispatch of the bench: what its job
// does in a job process, held until the release of hold unless that is
// "". In process the handler reads the bench's state instead.
func (b *bench) dispatchMeta(hold string) string {
	if !b.cfg.Processes {
		return ""
	}
	var what []string
	if b.join.Load() {
		what = append(what, metaJoin)
	}
	if hold != "" {
		what = append(what, metaHold+hold)
	}
	return strings.Join(what, ",")
}

// startTap is a bench worker's log handler with Config.Processes: it
// records the joins its job processes log, and passes every record on.
type startTap struct {
	b      *bench
	worker string // deployment of the worker
	next   slog.Handler
}

func (h *startTap) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *startTap) WithAttrs(as []slog.Attr) slog.Handler {
	return &startTap{b: h.b, worker: h.worker, next: h.next.WithAttrs(as)}
}

func (h *startTap) WithGroup(name string) slog.Handler {
	return &startTap{b: h.b, worker: h.worker, next: h.next.WithGroup(name)}
}

func (h *startTap) Handle(ctx context.Context, r slog.Record) error {
	switch r.Message {
	case joinedMsg:
		h.b.joinedN.Add(1)
	case joinFailedMsg:
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "error" {
				h.b.joinFailed(a.Value.String())
			}
			return true
		})
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

// joinFailed records that a job in a job process could not join its room.
func (b *bench) joinFailed(err string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.joinErrs++
	b.lastJoinErr = err
}

// joinFailures is how many jobs in job processes could not join their
// room, and the last error.
func (b *bench) joinFailures() (int, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.joinErrs, b.lastJoinErr
}

// recordStart records the start of the job of room, on a worker of
// deployment workerDep, as the handler saw it.
func (b *bench) recordStart(room, workerDep, jobDep string, at time.Time) {
	r := &run{done: make(chan struct{}), worker: workerDep, startAt: at, deployment: jobDep}
	b.mu.Lock()
	r.offerAt = b.offers[room]
	b.runs[room] = r
	b.mu.Unlock()
	b.started <- room
}

// recordStarts records the starts of w's jobs (in job processes: the
// handler runs in another process) from w's events, until w stopped. A
// worker takes only jobs of its own deployment, dep.
func (b *bench) recordStarts(wg *sync.WaitGroup, w *worker.Worker, dep string) {
	sub := w.Subscribe(worker.EventStarted)
	done := w.Done()
	wg.Go(func() {
		defer sub.Close()
		for {
			select {
			case e := <-sub.C:
				b.recordStart(e.Room, dep, dep, e.Time)
			case <-done:
				return
			}
		}
	})
}

// endHeld releases the jobs held as hold with Config.Processes, and waits
// until the workers run none.
func (b *bench) endHeld(hold string) error {
	if err := os.WriteFile(filepath.Join(b.releaseDir, hold), nil, 0o600); err != nil {
		return fmt.Errorf("bench: release the held jobs: %w", err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		left := b.runningJobs()
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: %d held jobs still run 2 minutes after their release: %s", len(left), strings.Join(left, ", "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runningJobs lists the jobs the bench's workers run: "id (room)".
func (b *bench) runningJobs() []string {
	b.mu.Lock()
	ws := b.workers
	b.mu.Unlock()
	var jobs []string
	for _, w := range ws {
		for _, j := range w.Snapshot().Jobs {
			jobs = append(jobs, j.ID+" ("+j.Room+")")
		}
	}
	return jobs
}

// jobProcessMemory is the mean memory of the processes of the jobs the
// workers run, and of the warm processes (children of this process that
// run its executable and have no job).
func (b *bench) jobProcessMemory() (running, warm procmem.Mem, err error) {
	b.mu.Lock()
	ws := b.workers
	b.mu.Unlock()
	busy := map[int]bool{}
	var run []procmem.Mem
	for _, w := range ws {
		for _, j := range w.Snapshot().Jobs {
			if j.Pid == 0 {
				continue
			}
			busy[j.Pid] = true
			if m, err := procmem.Read(j.Pid); err == nil {
				run = append(run, m)
			}
		}
	}
	var idle []procmem.Mem
	for _, pid := range ownChildren() {
		if busy[pid] {
			continue
		}
		if m, err := procmem.Read(pid); err == nil {
			idle = append(idle, m)
		}
	}
	if len(run) == 0 {
		return procmem.Mem{}, procmem.Mem{}, errors.New("bench: no job process to measure")
	}
	return procmem.Mean(run), procmem.Mean(idle), nil
}

// ownChildren lists the live child processes of this process that run its
// own executable: its job processes.
func ownChildren() []int {
	self, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return nil
	}
	me := strconv.Itoa(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …: comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		if f := strings.Fields(string(stat[i+1:])); len(f) < 2 || f[1] != me {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == self {
			pids = append(pids, pid)
		}
	}
	return pids
}
