package worker

import (
	"slices"
	"time"

	"github.com/livekit/protocol/livekit"
)

// statusLine carries one job's statuses to the connection it was assigned
// on, in order, none sooner than the job's StatusDelay. Guarded by w.mu.
type statusLine struct {
	sess      *session
	notBefore time.Time
	pending   []*livekit.UpdateJobStatus
	timer     *time.Timer
}

// report sends a job status on its line: to the connection the job was
// assigned on, not before the line's first instant, in order. A status
// whose connection is gone is dropped (and counted): the server forgot
// the connection's jobs when it ended, and would drop the status as one of
// an unknown job.
func (w *Worker) report(l *statusLine, u *livekit.UpdateJobStatus) {
	w.mu.Lock()
	if wait := time.Until(l.notBefore); wait > 0 || len(l.pending) > 0 {
		l.pending = append(l.pending, u)
		w.held++
		if l.timer == nil {
			l.timer = time.AfterFunc(max(wait, 0), func() { w.flushLine(l) })
		}
		w.mu.Unlock()
		return
	}
	s := w.deliverLocked(l.sess, u)
	w.mu.Unlock()
	if s != nil {
		s.kickOutbox()
	}
}

// flushLine delivers the statuses a line held back.
func (w *Worker) flushLine(l *statusLine) {
	w.mu.Lock()
	pending := l.pending
	l.pending, l.timer = nil, nil
	w.held -= len(pending)
	var s *session
	for _, u := range pending {
		if d := w.deliverLocked(l.sess, u); d != nil {
			s = d
		}
	}
	w.mu.Unlock()
	if s != nil {
		s.kickOutbox()
	}
}

// reportBeforeLeave bounds how long a job's end waits for its status to
// be written before the agent leaves its room.
const reportBeforeLeave = time.Second

// awaitSent waits, up to d, until the status u reported on l was written
// to its connection (or dropped, its connection gone).
func (w *Worker) awaitSent(l *statusLine, u *livekit.UpdateJobStatus, d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		w.mu.Lock()
		waiting := slices.Contains(l.pending, u)
		if s := l.sess; s != nil && w.sess == s && !waiting {
			waiting = slices.Contains(s.outbox, u) || s.writing > 0
		}
		w.mu.Unlock()
		if !waiting || time.Now().After(deadline) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// deliverLocked queues u on sess if that is the current connection and
// returns it; else it drops u and returns nil. w.mu is held.
func (w *Worker) deliverLocked(sess *session, u *livekit.UpdateJobStatus) *session {
	if sess == nil || w.sess != sess {
		w.obs.statusesDropped(1)
		return nil
	}
	sess.outbox = append(sess.outbox, u)
	return sess
}

func (w *Worker) kickStatus() {
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s != nil {
		s.kickStatus()
	}
}

// runShare is the part of the reported load that the running slots make
// up when the worker has a queue; the queue makes up the rest. Among the
// workers it may offer a job to, the server picks at random weighted by
// 1 - load: a worker with free slots is preferred to one that would queue.
const runShare = 0.85

// loadLocked is the load to report to the server, and whether the worker
// is full. Its fullness (slots, then queue; and LoadFunc against
// LoadThreshold) is mapped onto [0, ServerTargetLoad): the server takes a
// job only while some worker reports less than its target load, so a
// worker reaches it only when it is full. w.mu is held.
func (w *Worker) loadLocked(userLoad float64, hasUserLoad bool) (load float64, full bool) {
	var f float64 // fullness, in [0, 1]
	if max := w.o.MaxJobs; max > 0 {
		used, q := w.table.held(), w.o.queueCap()
		switch run := min(used, max); {
		case used >= max+q:
			f, full = 1, true
		case q == 0:
			f = float64(used) / float64(max)
		default:
			f = runShare*float64(run)/float64(max) + (1-runShare)*float64(used-run)/float64(q)
		}
	}
	if hasUserLoad {
		u := userLoad / w.o.LoadThreshold
		if u >= 1 {
			u, full = 1, true
		}
		f = max(f, u)
	}
	if w.exec.unavailable() != "" {
		// Jobs cannot start (job processes fail to): take no job it could not run.
		f, full = 1, true
	}
	return f * w.o.ServerTargetLoad, full
}

// workerStatus builds the next UpdateWorkerStatus.
func (w *Worker) workerStatus() *livekit.UpdateWorkerStatus {
	userLoad, hasUserLoad := w.userLoad()
	w.mu.Lock()
	defer w.mu.Unlock()
	load, full := w.loadLocked(userLoad, hasUserLoad)
	st := livekit.WorkerStatus_WS_AVAILABLE
	if w.draining || full {
		st = livekit.WorkerStatus_WS_FULL
	}
	w.seq++
	w.obs.setLoad(load)
	return &livekit.UpdateWorkerStatus{
		Status:   &st,
		Load:     float32(load),
		JobCount: uint32(w.table.assigned()),
		Draining: w.draining,
		Seq:      w.seq,
	}
}

func (w *Worker) touch() {
	w.mu.Lock()
	w.lastLoop = time.Now()
	w.mu.Unlock()
}
