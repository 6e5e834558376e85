package worker

// jobState is where a job offered to this worker is. The states, and
// every transition between them, are in this file: the methods of
// jobTable are the only code that changes a job's state, and each checks
// the state it moves from. docs/lifecycle.md draws them.
//
//	offered ─→ reserved ─→ queued ─→ running ─→ ending ─→ ended
//	   │          │  │        │         ↑                   ↑
//	   │          │  └────────┼─────────┘                   │
//	   ↓          ↓           └─────────────────────────────┘
//	declined   released (declined, or never assigned)
type jobState uint8

const (
	// stateOffered: an offer being screened and decided (handleOffer);
	// not in the table yet.
	stateOffered jobState = iota
	// stateReserved: a slot is held for the offer, from before OnRequest
	// decides until its assignment (or AssignmentTimeout).
	stateReserved
	// stateQueued: assigned, waiting for a slot (MaxJobs).
	stateQueued
	// stateRunning: its handler runs, or is being launched.
	stateRunning
	// stateEnding: its handler returned, or its process ended; its end is
	// being reported.
	stateEnding
	// stateEnded: over; its id is remembered, so that a repeated offer or
	// assignment never runs it again.
	stateEnded
)

func (s jobState) String() string {
	switch s {
	case stateOffered:
		return "offered"
	case stateReserved:
		return "reserved"
	case stateQueued:
		return "queued"
	case stateRunning:
		return "running"
	case stateEnding:
		return "ending"
	case stateEnded:
		return "ended"
	}
	return "unknown"
}

// jobTable holds the jobs of a worker from their reservation to their
// end. It is guarded by w.mu: every method is called with it held.
type jobTable struct {
	reserved map[string]*reservation // stateReserved
	jobs     map[string]*activeJob   // stateQueued, stateRunning and stateEnding
	queue    []*activeJob            // stateQueued, oldest first
	recent   recentSet               // stateEnded: the last ids that ended
	changed  chan struct{}           // closed and replaced whenever a job leaves jobs
}

func newJobTable(recent int) jobTable {
	return jobTable{
		reserved: make(map[string]*reservation),
		jobs:     make(map[string]*activeJob),
		recent:   newRecentSet(recent),
		changed:  make(chan struct{}),
	}
}

// known says whether id is reserved, assigned or ended (recently): an
// offer or assignment for it is a duplicate.
func (t *jobTable) known(id string) bool {
	if _, ok := t.reserved[id]; ok {
		return true
	}
	if _, ok := t.jobs[id]; ok {
		return true
	}
	return t.recent.has(id)
}

// assigned is the number of jobs queued, running or ending.
func (t *jobTable) assigned() int { return len(t.jobs) }

// queued is the number of jobs waiting for a slot.
func (t *jobTable) queued() int { return len(t.queue) }

// running is the number of jobs that hold a slot: running or ending.
func (t *jobTable) running() int { return len(t.jobs) - len(t.queue) }

// held is the number of slots taken or promised: assigned and reserved.
func (t *jobTable) held() int { return len(t.jobs) + len(t.reserved) }

// reserve: offered → reserved, for an offer made on s. False if id is
// known already (a duplicate).
func (t *jobTable) reserve(id string, s *session) bool {
	if t.known(id) {
		return false
	}
	t.reserved[id] = &reservation{sess: s, state: stateReserved}
	return true
}

// reservation is id's reservation, if it is reserved.
func (t *jobTable) reservation(id string) (*reservation, bool) {
	r, ok := t.reserved[id]
	return r, ok
}

// release: reserved → gone (the offer was declined, or its assignment
// never came). With r, only if r is still id's reservation. False if
// there was none.
func (t *jobTable) release(id string, r *reservation) bool {
	cur, ok := t.reserved[id]
	if !ok || (r != nil && cur != r) || cur.state != stateReserved {
		return false
	}
	if cur.timer != nil {
		cur.timer.Stop()
	}
	cur.state = stateOffered
	delete(t.reserved, id)
	return true
}

// releaseSession releases the reservations made on s: they were its.
func (t *jobTable) releaseSession(s *session) {
	for id, r := range t.reserved {
		if r.sess == s {
			t.release(id, r)
		}
	}
}

// claim takes id's reservation for its assignment: the reservation
// leaves the table; admit then brings the job in as queued or running.
func (t *jobTable) claim(id string) (*reservation, bool) {
	r, ok := t.reserved[id]
	if !ok || !t.release(id, r) {
		return nil, false
	}
	return r, true
}

// admit: reserved → running when fewer than maxJobs (0: no limit) hold a
// slot, else reserved → queued. It says whether a runs; a's reservation
// was claimed.
func (t *jobTable) admit(a *activeJob, maxJobs int) (runs bool) {
	if a.state != stateReserved {
		panic("worker: admit of a job " + a.state.String())
	}
	t.jobs[a.info.GetId()] = a
	if maxJobs == 0 || t.running() <= maxJobs {
		a.state = stateRunning
		return true
	}
	a.state = stateQueued
	t.queue = append(t.queue, a)
	return false
}

// launchQueued: queued → running for the oldest queued jobs, while fewer
// than maxJobs hold a slot. It returns them.
func (t *jobTable) launchQueued(maxJobs int) []*activeJob {
	var started []*activeJob
	for len(t.queue) > 0 && t.running() < maxJobs {
		a := t.queue[0]
		t.queue[0] = nil
		t.queue = t.queue[1:]
		a.state = stateRunning
		started = append(started, a)
	}
	return started
}

// unqueue: queued → ended, for a job that will never start. False if a
// is not queued.
func (t *jobTable) unqueue(a *activeJob) bool {
	if a.state != stateQueued {
		return false
	}
	for i, q := range t.queue {
		if q == a {
			t.queue = append(t.queue[:i], t.queue[i+1:]...)
			break
		}
	}
	t.forget(a)
	return true
}

// ending: running → ending, once its handler returned or its process
// ended. False if a is not running.
func (t *jobTable) ending(a *activeJob) bool {
	if a.state != stateRunning {
		return false
	}
	a.state = stateEnding
	return true
}

// end: running or ending → ended. False if a is neither.
func (t *jobTable) end(a *activeJob) bool {
	if a.state != stateRunning && a.state != stateEnding {
		return false
	}
	t.forget(a)
	return true
}

// holdsSlot says whether a holds a slot: running or ending.
func (t *jobTable) holdsSlot(a *activeJob) bool {
	return a.state == stateRunning || a.state == stateEnding
}

// forget moves a to ended and tells the waiters of changed.
func (t *jobTable) forget(a *activeJob) {
	a.state = stateEnded
	delete(t.jobs, a.info.GetId())
	t.recent.add(a.info.GetId())
	close(t.changed)
	t.changed = make(chan struct{})
}

// check returns the first broken invariant of the table, or "": every
// entry is in the collection of its state, and each queued job once.
func (t *jobTable) check() string {
	for id, r := range t.reserved {
		if r.state != stateReserved {
			return "reservation " + id + " is " + r.state.String()
		}
		if _, ok := t.jobs[id]; ok {
			return "job " + id + " is both reserved and assigned"
		}
	}
	inQueue := map[*activeJob]bool{}
	for _, a := range t.queue {
		if inQueue[a] {
			return "job " + a.info.GetId() + " is queued twice"
		}
		inQueue[a] = true
		if t.jobs[a.info.GetId()] != a {
			return "queued job " + a.info.GetId() + " is not among the jobs"
		}
	}
	for id, a := range t.jobs {
		switch {
		case a.info.GetId() != id:
			return "job " + a.info.GetId() + " is filed as " + id
		case (a.state == stateQueued) != inQueue[a]:
			return "job " + id + " is " + a.state.String() + " and in the queue: " + boolText(inQueue[a])
		case a.state != stateQueued && a.state != stateRunning && a.state != stateEnding:
			return "job " + id + " is among the jobs but " + a.state.String()
		case t.recent.has(id):
			return "job " + id + " is both assigned and ended"
		}
	}
	return ""
}

func boolText(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
