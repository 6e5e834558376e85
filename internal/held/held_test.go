package held

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
)

// fakeServer is an in-memory API and LeaseAPI: rooms and dispatches, with
// the server's atomic delete.
type fakeServer struct {
	mu         sync.Mutex
	now        time.Time
	rooms      map[string]*livekit.Room
	dispatches map[string]map[string]*livekit.AgentDispatch // room → id → dispatch
	next       int
	created    []*livekit.CreateAgentDispatchRequest
	deletes    int
	// beforeDelete, if set, runs before a delete (to delete it "meanwhile").
	beforeDelete func(room, id string)
	// deleteErr, if set, is returned by a delete that succeeded.
	deleteErr error
}

func newFake(now time.Time) *fakeServer {
	return &fakeServer{now: now, rooms: map[string]*livekit.Room{}, dispatches: map[string]map[string]*livekit.AgentDispatch{}}
}

func (f *fakeServer) addRoom(name string, age time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rooms[name] = &livekit.Room{Name: name, CreationTimeMs: f.now.Add(-age).UnixMilli(), CreationTime: f.now.Add(-age).Unix()}
	f.dispatches[name] = map[string]*livekit.AgentDispatch{}
}

func (f *fakeServer) addDispatch(room, agent, deployment string, age time.Duration, jobs int) *livekit.AgentDispatch {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	d := &livekit.AgentDispatch{
		Id: fmt.Sprintf("AD_%d", f.next), AgentName: agent, Deployment: deployment, Room: room,
		Metadata: "meta-" + room, Attributes: map[string]string{"a": "b"}, RestartPolicy: livekit.JobRestartPolicy_JRP_NEVER,
		State: &livekit.AgentDispatchState{CreatedAt: f.now.Add(-age).UnixNano()},
	}
	for range jobs {
		d.State.Jobs = append(d.State.Jobs, &livekit.Job{Id: "AJ_x"})
	}
	f.dispatches[room][d.Id] = d
	return d
}

func (f *fakeServer) ListRooms(_ context.Context, names ...string) ([]*livekit.Room, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*livekit.Room
	for _, r := range f.rooms {
		if len(names) == 0 || names[0] == r.Name {
			out = append(out, r)
		}
	}
	return out, nil
}

func (f *fakeServer) ListDispatches(_ context.Context, room string) ([]*livekit.AgentDispatch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*livekit.AgentDispatch
	for _, d := range f.dispatches[room] {
		out = append(out, d)
	}
	return out, nil
}

func (f *fakeServer) DeleteDispatch(_ context.Context, room, id string) error {
	if f.beforeDelete != nil {
		f.beforeDelete(room, id)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deletes++
	if _, ok := f.dispatches[room][id]; !ok {
		return ErrGone
	}
	delete(f.dispatches[room], id)
	return f.deleteErr
}

func (f *fakeServer) CreateDispatch(_ context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rooms[req.Room] == nil {
		return nil, fmt.Errorf("fake: room %q does not exist (a sweep must never create a room)", req.Room)
	}
	f.created = append(f.created, req)
	f.next++
	d := &livekit.AgentDispatch{Id: fmt.Sprintf("AD_%d", f.next), AgentName: req.AgentName, Deployment: req.Deployment, Room: req.Room,
		Metadata: req.Metadata, Attributes: req.Attributes, RestartPolicy: req.RestartPolicy, ThreadId: req.ThreadId,
		State: &livekit.AgentDispatchState{CreatedAt: f.now.UnixNano()}}
	f.dispatches[req.Room][d.Id] = d
	return d, nil
}

func (f *fakeServer) LeaseRoom(_ context.Context, room string) (string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.rooms[room]
	if !ok {
		return "", false, nil
	}
	return r.Metadata, true, nil
}

func (f *fakeServer) WriteLease(_ context.Context, room, md string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.rooms[room]; ok {
		r.Metadata = md
		return nil
	}
	f.rooms[room] = &livekit.Room{Name: room, Metadata: md, CreationTimeMs: f.now.UnixMilli()}
	f.dispatches[room] = map[string]*livekit.AgentDispatch{"AD_lease": {Id: "AD_lease", AgentName: room, Room: room,
		State: &livekit.AgentDispatchState{CreatedAt: f.now.Add(-time.Hour).UnixNano()}}}
	return nil
}

var canary = Key{AgentName: "echo", Deployment: "canary"}

func mineOnly(k Key) func(Key) bool { return func(x Key) bool { return x == k } }

func TestClassify(t *testing.T) {
	now := time.Unix(1000, 0)
	mk := func(agent, dep string, age time.Duration, jobs int) *livekit.AgentDispatch {
		d := &livekit.AgentDispatch{AgentName: agent, Deployment: dep, State: &livekit.AgentDispatchState{CreatedAt: now.Add(-age).UnixNano()}}
		for range jobs {
			d.State.Jobs = append(d.State.Jobs, &livekit.Job{})
		}
		return d
	}
	for _, tc := range []struct {
		name string
		d    *livekit.AgentDispatch
		mine func(Key) bool
		want Verdict
	}{
		{"dropped", mk("echo", "canary", 11*time.Second, 0), mineOnly(canary), Held},
		{"served", mk("echo", "canary", time.Hour, 1), mineOnly(canary), Served},
		{"young", mk("echo", "canary", 9*time.Second, 0), mineOnly(canary), Pending},
		{"other deployment", mk("echo", "staging", time.Hour, 0), mineOnly(canary), NotMine},
		{"other agent", mk("other", "canary", time.Hour, 0), mineOnly(canary), NotMine},
		{"production is not canary", mk("echo", "", time.Hour, 0), mineOnly(canary), NotMine},
		{"any key", mk("x", "y", time.Hour, 0), nil, Held},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(tc.d, now, 10*time.Second, tc.mine); got != tc.want {
				t.Fatalf("Classify = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSweepDecisions(t *testing.T) {
	now := time.Unix(10_000, 0)
	type want struct {
		recovered, lost, created int
		unserved                 int
		err                      bool
	}
	for _, tc := range []struct {
		name  string
		setup func(f *fakeServer)
		limit int
		want  want
	}{
		{"dropped is served", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			f.addDispatch("r1", "echo", "canary", 30*time.Second, 0)
		}, -1, want{recovered: 1, created: 1, unserved: 1}},
		{"already served is left alone", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			f.addDispatch("r1", "echo", "canary", 30*time.Second, 1)
		}, -1, want{}},
		{"young is left alone", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			f.addDispatch("r1", "echo", "canary", 2*time.Second, 0)
		}, -1, want{unserved: 1}},
		{"another key is left alone", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			f.addDispatch("r1", "echo", "staging", 30*time.Second, 0)
			f.addDispatch("r1", "other", "canary", 30*time.Second, 0)
		}, -1, want{}},
		{"deleted meanwhile is not re-created", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			d := f.addDispatch("r1", "echo", "canary", 30*time.Second, 0)
			f.beforeDelete = func(room, id string) {
				f.mu.Lock()
				delete(f.dispatches[room], d.Id)
				f.mu.Unlock()
			}
		}, -1, want{lost: 1, unserved: 1}},
		{"room gone is not listed nor re-created", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			f.addDispatch("r1", "echo", "canary", 30*time.Second, 0)
			delete(f.rooms, "r1") // closed: not listed, its dispatches with it
		}, -1, want{}},
		{"a delete that succeeded with an error is re-created once", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			f.addDispatch("r1", "echo", "canary", 30*time.Second, 0)
			f.deleteErr = errors.New("twirp error internal: marshaling livekit.AgentDispatch: size mismatch")
		}, -1, want{recovered: 1, created: 1, unserved: 1}},
		{"a delete that failed is not re-created", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			d := f.addDispatch("r1", "echo", "canary", 30*time.Second, 0)
			f.deleteErr = errors.New("unavailable")
			f.beforeDelete = func(room, id string) {
				f.mu.Lock()
				defer f.mu.Unlock()
				f.dispatches[room]["keep"] = d // the server kept it
			}
		}, -1, want{unserved: 1, err: true}},
		{"count only", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			f.addDispatch("r1", "echo", "canary", 30*time.Second, 0)
		}, 0, want{unserved: 1}},
		{"limit serves the oldest", func(f *fakeServer) {
			f.addRoom("r1", time.Minute)
			f.addRoom("r2", time.Minute)
			f.addDispatch("r1", "echo", "canary", 20*time.Second, 0)
			f.addDispatch("r2", "echo", "canary", 40*time.Second, 0)
		}, 1, want{recovered: 1, created: 1, unserved: 2}},
		{"lease rooms are skipped", func(f *fakeServer) {
			_ = f.WriteLease(context.Background(), LeaseRoom(canary), "1 w")
			f.rooms[LeaseRoom(canary)].CreationTimeMs = f.now.Add(-time.Hour).UnixMilli()
		}, -1, want{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(now)
			tc.setup(f)
			s := New(Config{API: f, Mine: mineOnly(canary), Now: func() time.Time { return now }})
			res, err := s.Sweep(t.Context(), tc.limit)
			if (err != nil) != tc.want.err {
				t.Fatalf("Sweep error = %v", err)
			}
			got := want{recovered: len(res.Recovered), lost: res.Lost, created: len(f.created), unserved: res.Unserved[canary], err: err != nil}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSweepKeepsEverything(t *testing.T) {
	now := time.Unix(10_000, 0)
	f := newFake(now)
	f.addRoom("r1", time.Minute)
	old := f.addDispatch("r1", "echo", "canary", 30*time.Second, 0)
	old.ThreadId = "AT_1"
	s := New(Config{API: f, Mine: mineOnly(canary), Now: func() time.Time { return now }})
	res, err := s.Sweep(t.Context(), -1)
	if err != nil || len(res.Recovered) != 1 {
		t.Fatalf("Sweep = %+v, %v", res, err)
	}
	rec := res.Recovered[0]
	if rec.Old != old.Id || rec.Held != 30*time.Second || rec.Room != "r1" || rec.Key != canary {
		t.Fatalf("recovery = %+v", rec)
	}
	req := f.created[0]
	if req.Room != "r1" || req.AgentName != "echo" || req.Deployment != "canary" || req.Metadata != old.Metadata ||
		req.RestartPolicy != old.RestartPolicy || req.ThreadId != "AT_1" || !maps.Equal(req.Attributes, old.Attributes) {
		t.Fatalf("replacement = %v, want the fields of %v", req, old)
	}
	if ds, _ := f.ListDispatches(t.Context(), "r1"); len(ds) != 1 || ds[0].Id != rec.New {
		t.Fatalf("room has %v, want only the replacement %s", ds, rec.New)
	}
}

// Many sweepers (workers on many nodes) sweep one server at once: every
// held dispatch is served exactly once.
func TestSweepersRacingServeOnce(t *testing.T) {
	now := time.Unix(10_000, 0)
	f := newFake(now)
	const rooms = 50
	for i := range rooms {
		f.addRoom(fmt.Sprint("r", i), time.Minute)
		f.addDispatch(fmt.Sprint("r", i), "echo", "canary", 30*time.Second, 0)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	recovered, lost := 0, 0
	for range 8 {
		s := New(Config{API: f, Mine: mineOnly(canary), Now: func() time.Time { return now }})
		wg.Go(func() {
			res, err := s.Sweep(context.Background(), -1)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			recovered += len(res.Recovered)
			lost += res.Lost
			mu.Unlock()
		})
	}
	wg.Wait()
	if recovered != rooms || len(f.created) != rooms {
		t.Fatalf("%d recovered, %d created; want %d each (lost claims: %d)", recovered, len(f.created), rooms, lost)
	}
}

func TestSweepNextHeld(t *testing.T) {
	now := time.Unix(10_000, 0)
	f := newFake(now)
	f.addRoom("young", 3*time.Second)
	f.addDispatch("young", "echo", "canary", time.Second, 0) // in flight: not suspect
	f.addRoom("old", time.Minute)
	f.addDispatch("old", "echo", "canary", 4*time.Second, 0)
	s := New(Config{API: f, Mine: mineOnly(canary), Now: func() time.Time { return now }})
	res, err := s.Sweep(t.Context(), -1)
	if err != nil {
		t.Fatal(err)
	}
	if want := now.Add(6 * time.Second); !res.NextHeld.Equal(want) {
		t.Fatalf("NextHeld = %v, want %v (the dispatch 4 s old)", res.NextHeld, want)
	}
	if res.Listed != 2 || res.Calls != 3 || res.Unserved[canary] != 2 {
		t.Fatalf("listed %d rooms in %d calls, %d unserved; want 2 rooms, 3 calls, 2 unserved", res.Listed, res.Calls, res.Unserved[canary])
	}
	f2 := newFake(now)
	f2.addRoom("young", 3*time.Second)
	f2.addDispatch("young", "echo", "canary", time.Second, 0)
	res, _ = New(Config{API: f2, Mine: mineOnly(canary), Now: func() time.Time { return now }}).Sweep(t.Context(), -1)
	if !res.NextHeld.IsZero() {
		t.Fatalf("NextHeld = %v for a dispatch in flight, want none", res.NextHeld)
	}
}

func TestLease(t *testing.T) {
	now := time.Unix(10_000, 0)
	clock := now
	f := newFake(now)
	a := NewLease(f, canary, "A", func() time.Time { return clock })
	b := NewLease(f, canary, "B", func() time.Time { return clock })
	other := NewLease(f, Key{AgentName: "echo"}, "C", func() time.Time { return clock })
	step := func(l *Lease, want bool) {
		t.Helper()
		ok, _, err := l.Acquire(t.Context(), 30*time.Second)
		if err != nil || ok != want {
			t.Fatalf("Acquire = %v, %v; want %v", ok, err, want)
		}
	}
	step(a, true)  // first: creates the lease room
	step(b, false) // A swept just now
	step(other, true)
	clock = clock.Add(29 * time.Second)
	step(b, false)
	clock = clock.Add(2 * time.Second)
	step(b, true)
	step(a, false)
}
