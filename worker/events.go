package worker

import (
	"sync"
	"sync/atomic"
	"time"
)

// EventKind says what happened to a job; see [Event].
type EventKind int

// The kinds of job events, in the order a job meets them. Every offer is
// Offered, then Declined or (once assigned) Queued and/or Started, and
// every assigned job ends with exactly one Ended.
const (
	// EventOffered: the server offered a job (any job: one that is not
	// this worker's is offered, then declined).
	EventOffered EventKind = iota + 1
	// EventDeclined: the worker declined an offer; Reason says why (one
	// of the Decline constants).
	EventDeclined
	// EventQueued: an assigned job waits for a free slot (MaxJobs).
	EventQueued
	// EventStarted: the job's handler was launched (in process, or in a
	// job process).
	EventStarted
	// EventEnded: the job is over, and its final status was handed to the
	// connection (unless the server ended it itself). Status says how it
	// ended, Err what was reported failed, Cause what cancelled it.
	EventEnded
	// EventRestarted: the agent of a failed job was dispatched to its
	// room again (Options.Restart); DispatchID is the new dispatch.
	EventRestarted
	// EventRecovered: a dispatch of this worker's agent name and
	// deployment that the server had dropped (a held dispatch, see
	// Options.Held) was served by this worker: DispatchID is the dispatch
	// that replaced it, Room its room, Took how long it had been held.
	// Its job then comes as an offer like any other.
	EventRecovered
)

var eventKindNames = [...]string{
	EventOffered:   "offered",
	EventDeclined:  "declined",
	EventQueued:    "queued",
	EventStarted:   "started",
	EventEnded:     "ended",
	EventRestarted: "restarted",
	EventRecovered: "recovered",
}

func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return "unknown"
}

// EndStatus is how a job ended, as EventEnded and the
// lkagent_jobs_finished_total metric's status label say it.
type EndStatus string

// End statuses.
const (
	StatusSuccess      EndStatus = "success"       // the handler returned nil
	StatusFailed       EndStatus = "failed"        // the handler returned an error, or was cancelled and reported failed
	StatusPanicked     EndStatus = "panicked"      // the handler panicked
	StatusTerminated   EndStatus = "terminated"    // the server ended the job (JobTermination)
	StatusQueueTimeout EndStatus = "queue_timeout" // never started: no slot within QueueTimeout
	StatusDrainTimeout EndStatus = "drain_timeout" // never started: the worker stopped first
	StatusCrashed      EndStatus = "crashed"       // its job process died
	StatusMemoryLimit  EndStatus = "memory_limit"  // its job process passed ProcessOptions.MemoryLimit
	StatusKilled       EndStatus = "killed"        // its job process did not end in time and was killed
	StatusStartFailed  EndStatus = "start_failed"  // its job process could not be started
)

// Event is one thing that happened to a job on this worker. Which fields
// are set depends on Kind.
type Event struct {
	Kind  EventKind
	Time  time.Time
	JobID string
	Room  string

	// Reason is why an offer was declined (EventDeclined): one of the
	// Decline constants.
	Reason string
	// Status is how the job ended (EventEnded).
	Status EndStatus
	// Err is the failure reported to the server (EventEnded with a
	// failed status); nil otherwise.
	Err error
	// Cause is what cancelled the job's context (EventEnded), such as
	// job.ErrTerminated, job.ErrDrainTimeout or job.ErrWorkerStopped;
	// nil when the job ended on its own.
	Cause error
	// Took is how long the job ran, or waited in the queue when it never
	// started (EventEnded); how long a held dispatch had waited
	// (EventRecovered).
	Took time.Duration
	// DispatchID is the new dispatch of a restarted agent
	// (EventRestarted) or of a held dispatch served (EventRecovered).
	DispatchID string
}

// EventBuffer is how many events a [Subscription] holds for a consumer
// that has not read them yet; events beyond it are dropped, and counted.
const EventBuffer = 1024

// Subscription delivers a worker's job events; see [Worker.Subscribe].
type Subscription struct {
	// C receives the events, in the order they happened for each job.
	// It is closed by Close.
	C <-chan Event

	c       chan Event
	kinds   map[EventKind]bool // nil: every kind
	dropped atomic.Uint64
	hub     *eventHub
}

// Dropped is how many events were dropped because C's buffer was full.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription and closes C. It may be called more than
// once.
func (s *Subscription) Close() { s.hub.remove(s) }

// Subscribe returns a subscription to the worker's job events of the
// given kinds (every kind when none is given), from now on, across runs,
// until Close. Events are delivered to a buffer of EventBuffer events and
// never wait for the consumer: the worker's protocol loops do not slow
// down for a slow consumer. An event that finds the buffer full is
// dropped and counted (Subscription.Dropped); a consumer that must see
// every event reads C without delay.
func (w *Worker) Subscribe(kinds ...EventKind) *Subscription {
	c := make(chan Event, EventBuffer)
	s := &Subscription{C: c, c: c, hub: &w.events}
	if len(kinds) > 0 {
		s.kinds = make(map[EventKind]bool, len(kinds))
		for _, k := range kinds {
			s.kinds[k] = true
		}
	}
	w.events.add(s)
	return s
}

// eventHub hands events to the subscriptions. emit never blocks: it may
// be called from the protocol loops, and with w.mu held.
type eventHub struct {
	mu   sync.Mutex
	subs map[*Subscription]struct{}
}

func (h *eventHub) add(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = make(map[*Subscription]struct{})
	}
	h.subs[s] = struct{}{}
}

func (h *eventHub) remove(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.c)
	}
}

func (h *eventHub) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.kinds != nil && !s.kinds[e.Kind] {
			continue
		}
		select {
		case s.c <- e:
		default:
			s.dropped.Add(1)
		}
	}
}

// recovered emits EventRecovered for a held dispatch this worker served.
func (w *Worker) recovered(room, dispatchID string, held time.Duration) {
	w.events.emit(Event{Kind: EventRecovered, Room: room, DispatchID: dispatchID, Took: held})
}
