package worker

import (
	"sort"
	"time"

	"github.com/lkagent/lkagent/internal/jobproc"
)

// State is the worker's connection state.
type State int

// Connection states, in the order a healthy worker goes through them.
const (
	StateConnecting State = iota
	StateRegistered
	StateDisconnected
	StateStopped
)

func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateRegistered:
		return "registered"
	case StateDisconnected:
		return "disconnected"
	case StateStopped:
		return "stopped"
	}
	return "unknown"
}

// StateChange reports a connection state change to Options.OnStateChange.
type StateChange struct {
	State State
	// WorkerID is the server's id for this registration (StateRegistered).
	WorkerID string
	// Err is why the connection was lost or the worker stopped.
	Err error
	// RetryIn is the delay before the next attempt (StateDisconnected).
	RetryIn time.Duration
	// Attempt counts connection attempts since the last stable connection.
	Attempt int
}

func (w *Worker) notify(c StateChange) {
	if w.o.OnStateChange != nil {
		w.o.OnStateChange(c)
	}
}

// Snapshot is the worker's state at one instant, for status pages.
type Snapshot struct {
	AgentName  string  `json:"agent_name"`
	Deployment string  `json:"deployment"`
	WorkerID   string  `json:"worker_id"`
	Registered bool    `json:"registered"`
	Draining   bool    `json:"draining"`
	GaveUp     bool    `json:"gave_up"`
	Load       float64 `json:"load"`
	// Jobs are the running and the queued jobs, oldest first.
	Jobs []JobSnapshot `json:"jobs"`
	// Queued is how many of Jobs wait for a slot.
	Queued int `json:"queued"`
	// LastActivity is when a worker loop last turned.
	LastActivity time.Time `json:"last_activity"`
	// Hint says why registrations keep failing, when the worker knows.
	Hint string `json:"hint,omitempty"`
}

// JobSnapshot describes one running or queued job.
type JobSnapshot struct {
	ID       string `json:"id"`
	Room     string `json:"room"`
	Identity string `json:"identity"`
	// StartedAt is when the handler started; zero while queued.
	StartedAt time.Time `json:"started_at"`
	// Queued: the job waits for a slot since QueuedAt.
	Queued   bool      `json:"queued,omitempty"`
	QueuedAt time.Time `json:"queued_at,omitzero"`
	// Pid and RSS (bytes) of the job's process (Processes executor).
	Pid int   `json:"pid,omitempty"`
	RSS int64 `json:"rss_bytes,omitempty"`
	// IgnoringTermination: the server terminated the job more than
	// ShutdownTimeout ago and its handler still runs.
	IgnoringTermination bool `json:"ignoring_termination,omitempty"`
	// Age is how long the job has run, or waited while queued.
	Age time.Duration `json:"age_ns"`
}

func (j JobSnapshot) since() time.Time {
	if j.Queued {
		return j.QueuedAt
	}
	return j.StartedAt
}

// Snapshot returns the worker's current state.
func (w *Worker) Snapshot() Snapshot {
	userLoad, hasUserLoad := w.userLoad()
	w.mu.Lock()
	now := time.Now()
	s := Snapshot{
		AgentName:    w.o.AgentName,
		Deployment:   w.o.Deployment,
		WorkerID:     w.workerID,
		Registered:   w.connected,
		Draining:     w.draining,
		GaveUp:       w.gaveUp,
		Queued:       w.table.queued(),
		Jobs:         make([]JobSnapshot, 0, w.table.assigned()),
		LastActivity: w.lastLoop,
		Hint:         w.hint,
	}
	s.Load, _ = w.loadLocked(userLoad, hasUserLoad)
	procs := map[int]*jobproc.Proc{}
	for _, a := range w.table.jobs {
		queued := a.state == stateQueued
		js := JobSnapshot{ID: a.info.GetId(), Room: a.info.GetRoom().GetName(), Identity: a.identity,
			StartedAt: a.started, Age: now.Sub(a.started), Queued: queued, IgnoringTermination: a.ignoring}
		if queued {
			js.QueuedAt, js.Age = a.queuedAt, now.Sub(a.queuedAt)
		}
		if a.proc != nil {
			procs[len(s.Jobs)] = a.proc
		}
		s.Jobs = append(s.Jobs, js)
	}
	w.mu.Unlock()
	for i, p := range procs { // reads /proc: not under the lock
		s.Jobs[i].Pid, s.Jobs[i].RSS = p.Pid(), p.RSS()
	}
	sort.Slice(s.Jobs, func(i, k int) bool { return s.Jobs[i].since().Before(s.Jobs[k].since()) })
	return s
}

// recentSet remembers the last n job ids that ended.
type recentSet struct {
	ids  map[string]struct{}
	ring []string
	next int
}

func newRecentSet(n int) recentSet {
	return recentSet{ids: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (r *recentSet) has(id string) bool { _, ok := r.ids[id]; return ok }

func (r *recentSet) add(id string) {
	if old := r.ring[r.next]; old != "" {
		delete(r.ids, old)
	}
	r.ring[r.next] = id
	r.ids[id] = struct{}{}
	r.next = (r.next + 1) % len(r.ring)
}

// setHint records why registrations keep failing ("" when nothing is
// known), for /readyz and Snapshot.
func (w *Worker) setHint(h string) {
	w.mu.Lock()
	w.hint = h
	w.mu.Unlock()
}
