package worker

import (
	"testing"

	"github.com/livekit/protocol/livekit"
)

// tableWith builds a table holding, in order: reserved ids, then jobs
// admitted with maxJobs (running while slots are free, then queued), then
// ended ids.
func tableWith(t *testing.T, maxJobs int, reserved, admitted, ended []string) (*jobTable, map[string]*activeJob) {
	t.Helper()
	tb := newJobTable(16)
	jobs := map[string]*activeJob{}
	for _, id := range reserved {
		if !tb.reserve(id, nil) {
			t.Fatalf("reserve(%s) = false in a fresh table", id)
		}
	}
	for _, id := range admitted {
		a := &activeJob{info: &livekit.Job{Id: id}, state: stateReserved}
		tb.admit(a, maxJobs)
		jobs[id] = a
	}
	for _, id := range ended {
		tb.recent.add(id)
	}
	if bad := tb.check(); bad != "" {
		t.Fatalf("table built for the test: %s", bad)
	}
	return &tb, jobs
}

// Each transition moves a job from the state it checks to the next, keeps
// the table's invariants, and refuses a job in any other state.
func TestJobTableTransitions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// the table: MaxJobs 1, "r" reserved, "a" running, "b" queued,
		// "e" ended
		do        func(tb *jobTable, jobs map[string]*activeJob) bool
		wantOK    bool
		id        string   // the job whose state is checked after
		wantState jobState // of id after
		changed   bool     // waiters on changed were woken
	}{
		{name: "offered → reserved", do: func(tb *jobTable, _ map[string]*activeJob) bool { return tb.reserve("n", nil) },
			wantOK: true, id: "n", wantState: stateReserved},
		{name: "reserve a reserved id: duplicate", do: func(tb *jobTable, _ map[string]*activeJob) bool { return tb.reserve("r", nil) },
			id: "r", wantState: stateReserved},
		{name: "reserve an assigned id: duplicate", do: func(tb *jobTable, _ map[string]*activeJob) bool { return tb.reserve("a", nil) },
			id: "a", wantState: stateRunning},
		{name: "reserve an ended id: duplicate", do: func(tb *jobTable, _ map[string]*activeJob) bool { return tb.reserve("e", nil) },
			id: "e", wantState: stateEnded},
		{name: "reserved → released", do: func(tb *jobTable, _ map[string]*activeJob) bool { return tb.release("r", nil) },
			wantOK: true, id: "r", wantState: stateOffered},
		{name: "release another reservation of the id: refused", do: func(tb *jobTable, _ map[string]*activeJob) bool {
			return tb.release("r", &reservation{state: stateReserved})
		}, id: "r", wantState: stateReserved},
		{name: "release an unknown id: refused", do: func(tb *jobTable, _ map[string]*activeJob) bool { return tb.release("n", nil) },
			id: "r", wantState: stateReserved},
		{name: "reserved → claimed by its assignment", do: func(tb *jobTable, _ map[string]*activeJob) bool {
			_, ok := tb.claim("r")
			return ok
		}, wantOK: true, id: "r", wantState: stateOffered},
		{name: "claim an assigned id: refused", do: func(tb *jobTable, _ map[string]*activeJob) bool {
			_, ok := tb.claim("a")
			return ok
		}, id: "a", wantState: stateRunning},
		{name: "reserved → queued (no free slot)", do: func(tb *jobTable, jobs map[string]*activeJob) bool {
			jobs["n"] = &activeJob{info: &livekit.Job{Id: "n"}, state: stateReserved}
			return !tb.admit(jobs["n"], 1)
		}, wantOK: true, id: "n", wantState: stateQueued},
		{name: "reserved → running (no limit)", do: func(tb *jobTable, jobs map[string]*activeJob) bool {
			jobs["n"] = &activeJob{info: &livekit.Job{Id: "n"}, state: stateReserved}
			return tb.admit(jobs["n"], 0)
		}, wantOK: true, id: "n", wantState: stateRunning},
		{name: "queued → running once a slot is free", do: func(tb *jobTable, jobs map[string]*activeJob) bool {
			tb.end(jobs["a"])
			started := tb.launchQueued(1)
			return len(started) == 1 && started[0] == jobs["b"]
		}, wantOK: true, id: "b", wantState: stateRunning, changed: true},
		{name: "queued stays queued while no slot is free", do: func(tb *jobTable, _ map[string]*activeJob) bool {
			return len(tb.launchQueued(1)) == 0
		}, wantOK: true, id: "b", wantState: stateQueued},
		{name: "queued → ended (queue timeout, termination, stop)", do: func(tb *jobTable, jobs map[string]*activeJob) bool {
			return tb.unqueue(jobs["b"])
		}, wantOK: true, id: "b", wantState: stateEnded, changed: true},
		{name: "unqueue a running job: refused", do: func(tb *jobTable, jobs map[string]*activeJob) bool { return tb.unqueue(jobs["a"]) },
			id: "a", wantState: stateRunning},
		{name: "running → ending", do: func(tb *jobTable, jobs map[string]*activeJob) bool { return tb.ending(jobs["a"]) },
			wantOK: true, id: "a", wantState: stateEnding},
		{name: "ending a queued job: refused", do: func(tb *jobTable, jobs map[string]*activeJob) bool { return tb.ending(jobs["b"]) },
			id: "b", wantState: stateQueued},
		{name: "ending → ended", do: func(tb *jobTable, jobs map[string]*activeJob) bool {
			return tb.ending(jobs["a"]) && tb.end(jobs["a"])
		}, wantOK: true, id: "a", wantState: stateEnded, changed: true},
		{name: "running → ended", do: func(tb *jobTable, jobs map[string]*activeJob) bool { return tb.end(jobs["a"]) },
			wantOK: true, id: "a", wantState: stateEnded, changed: true},
		{name: "end a queued job: refused", do: func(tb *jobTable, jobs map[string]*activeJob) bool { return tb.end(jobs["b"]) },
			id: "b", wantState: stateQueued},
		{name: "end an ended job: refused", do: func(tb *jobTable, jobs map[string]*activeJob) bool {
			tb.end(jobs["a"])
			return tb.end(jobs["a"]) // again
		}, id: "a", wantState: stateEnded, changed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, jobs := tableWith(t, 1, []string{"r"}, []string{"a", "b"}, []string{"e"})
			changed := tb.changed
			if ok := tc.do(tb, jobs); ok != tc.wantOK {
				t.Fatalf("transition returned %v, want %v", ok, tc.wantOK)
			}
			if bad := tb.check(); bad != "" {
				t.Fatalf("invariant broken: %s", bad)
			}
			if got := stateOf(tb, jobs, tc.id); got != tc.wantState {
				t.Errorf("%s is %s, want %s", tc.id, got, tc.wantState)
			}
			select {
			case <-changed:
				if !tc.changed {
					t.Error("waiters were woken, but no job left")
				}
			default:
				if tc.changed {
					t.Error("a job left, but its waiters were not woken")
				}
			}
		})
	}
}

// stateOf is id's state as the table says it: reserved, assigned (the
// job's own state), ended, or else offered (not in the table).
func stateOf(tb *jobTable, jobs map[string]*activeJob, id string) jobState {
	if r, ok := tb.reserved[id]; ok {
		return r.state
	}
	if a, ok := tb.jobs[id]; ok {
		return a.state
	}
	if tb.recent.has(id) {
		if a, ok := jobs[id]; ok && a.state != stateEnded {
			return a.state // remembered as ended, but not: check says so too
		}
		return stateEnded
	}
	return stateOffered
}

// The queue starts its oldest jobs first, and never more than the free
// slots; a job that holds a slot while ending counts.
func TestJobTableQueueOrder(t *testing.T) {
	t.Parallel()
	tb, jobs := tableWith(t, 1, nil, []string{"a", "q1", "q2", "q3"}, nil)
	if tb.running() != 1 || tb.queued() != 3 {
		t.Fatalf("running %d, queued %d; want 1, 3", tb.running(), tb.queued())
	}
	tb.ending(jobs["a"])
	if got := tb.launchQueued(1); len(got) != 0 {
		t.Fatalf("started %d while the ending job holds the slot", len(got))
	}
	tb.end(jobs["a"])
	got := tb.launchQueued(2) // MaxJobs 2 now: two free slots
	if len(got) != 2 || got[0] != jobs["q1"] || got[1] != jobs["q2"] {
		t.Fatalf("started %v, want q1 then q2", got)
	}
	if bad := tb.check(); bad != "" || tb.queued() != 1 || tb.running() != 2 {
		t.Fatalf("after: %q, queued %d, running %d", bad, tb.queued(), tb.running())
	}
}

// check finds a broken table.
func TestJobTableCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		breakIt func(tb *jobTable, jobs map[string]*activeJob)
	}{
		{"a queued job out of the queue", func(tb *jobTable, jobs map[string]*activeJob) { tb.queue = nil }},
		{"a running job in the queue", func(tb *jobTable, jobs map[string]*activeJob) { tb.queue = append(tb.queue, jobs["a"]) }},
		{"a job both assigned and ended", func(tb *jobTable, jobs map[string]*activeJob) { tb.recent.add("a") }},
		{"a job both reserved and assigned", func(tb *jobTable, jobs map[string]*activeJob) {
			tb.reserved["a"] = &reservation{state: stateReserved}
		}},
		{"an ended job still among the jobs", func(tb *jobTable, jobs map[string]*activeJob) { jobs["a"].state = stateEnded }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, jobs := tableWith(t, 1, nil, []string{"a", "b"}, nil)
			tc.breakIt(tb, jobs)
			if tb.check() == "" {
				t.Error("check found nothing")
			}
		})
	}
}
