package worker

import (
	"sort"
	"time"
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
	AgentName  string        `json:"agent_name"`
	Deployment string        `json:"deployment"`
	WorkerID   string        `json:"worker_id"`
	Registered bool          `json:"registered"`
	Draining   bool          `json:"draining"`
	GaveUp     bool          `json:"gave_up"`
	Load       float64       `json:"load"`
	Jobs       []JobSnapshot `json:"jobs"`
	// LastActivity is when a worker loop last turned.
	LastActivity time.Time `json:"last_activity"`
	// Hint says why registrations keep failing, when the worker knows.
	Hint string `json:"hint,omitempty"`
}

// JobSnapshot describes one running job.
type JobSnapshot struct {
	ID        string        `json:"id"`
	Room      string        `json:"room"`
	Identity  string        `json:"identity"`
	StartedAt time.Time     `json:"started_at"`
	Age       time.Duration `json:"age_ns"`
}

// Snapshot returns the worker's current state.
func (w *Worker) Snapshot() Snapshot {
	userLoad, hasUserLoad := w.userLoad()
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	s := Snapshot{
		AgentName:    w.o.AgentName,
		Deployment:   w.o.Deployment,
		WorkerID:     w.workerID,
		Registered:   w.connected,
		Draining:     w.draining,
		GaveUp:       w.gaveUp,
		Load:         w.loadLocked(),
		Jobs:         make([]JobSnapshot, 0, len(w.jobs)),
		LastActivity: w.lastLoop,
		Hint:         w.hint,
	}
	if hasUserLoad {
		s.Load = userLoad
	}
	for _, a := range w.jobs {
		s.Jobs = append(s.Jobs, JobSnapshot{ID: a.info.GetId(), Room: a.info.GetRoom().GetName(), Identity: a.identity,
			StartedAt: a.started, Age: now.Sub(a.started)})
	}
	sort.Slice(s.Jobs, func(i, k int) bool { return s.Jobs[i].StartedAt.Before(s.Jobs[k].StartedAt) })
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
