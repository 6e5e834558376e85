package restart

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/lkagent/lkagent/livekittest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
)

// fakeAPI is an in-memory server: rooms, participants and dispatches. Like
// the real one, deleting a dispatch is atomic.
type fakeAPI struct {
	mu      sync.Mutex
	rooms   map[string]bool
	parts   map[string][]*livekit.ParticipantInfo
	ds      map[string][]*livekit.AgentDispatch
	removed []string
	created []*livekit.CreateAgentDispatchRequest
	n       int
	fail    map[string]error // method name → error it returns
	// beforeDelete, if set, runs before a delete (outside the lock); set
	// it with setBeforeDelete once restarts may be running.
	beforeDelete func()
	// beforeList, if set, runs before listing dispatches (outside the
	// lock), as beforeDelete.
	beforeList func()
}

func newFake() *fakeAPI {
	return &fakeAPI{rooms: map[string]bool{}, parts: map[string][]*livekit.ParticipantInfo{},
		ds: map[string][]*livekit.AgentDispatch{}, fail: map[string]error{}}
}

// room adds a room with a caller and the agent of a room job of agent/
// deployment, started 1s before the agent joined; it returns the dispatch.
func (f *fakeAPI) room(name, agent, deployment, identity string, mod func(*livekit.AgentDispatch)) *livekit.AgentDispatch {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rooms[name] = true
	f.parts[name] = []*livekit.ParticipantInfo{
		{Identity: "caller", Kind: livekit.ParticipantInfo_STANDARD, State: livekit.ParticipantInfo_ACTIVE},
		{Identity: identity, Kind: livekit.ParticipantInfo_AGENT, State: livekit.ParticipantInfo_ACTIVE},
	}
	f.n++
	d := &livekit.AgentDispatch{
		Id: fmt.Sprintf("AD_%d", f.n), AgentName: agent, Room: name, Deployment: deployment, Metadata: "meta",
		Attributes: map[string]string{"user": "attr"}, ThreadId: "AT_1",
		State: &livekit.AgentDispatchState{CreatedAt: time.Now().Add(-time.Hour).UnixNano(), Jobs: []*livekit.Job{{
			Id: fmt.Sprintf("AJ_%d", f.n), Type: livekit.JobType_JT_ROOM, DispatchId: fmt.Sprintf("AD_%d", f.n),
			State: &livekit.JobState{ParticipantIdentity: identity, StartedAt: joined.Add(-time.Second).UnixNano()},
		}}},
	}
	if mod != nil {
		mod(d)
	}
	f.ds[name] = append(f.ds[name], d)
	return d
}

// joined is when the fake's agents joined.
var joined = time.Now().Add(-time.Minute)

func (f *fakeAPI) roomExists(_ context.Context, room string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rooms[room], f.fail["roomExists"]
}

func (f *fakeAPI) participants(_ context.Context, room string) ([]*livekit.ParticipantInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.parts[room], f.fail["participants"]
}

func (f *fakeAPI) dispatches(_ context.Context, room string) ([]*livekit.AgentDispatch, error) {
	f.mu.Lock()
	before := f.beforeList
	f.mu.Unlock()
	if before != nil {
		before()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail["dispatches"]; err != nil {
		return nil, err
	}
	var out []*livekit.AgentDispatch
	for _, d := range f.ds[room] {
		out = append(out, proto.Clone(d).(*livekit.AgentDispatch))
	}
	return out, nil
}

func (f *fakeAPI) deleteDispatch(_ context.Context, room, id string) error {
	f.mu.Lock()
	before := f.beforeDelete
	f.mu.Unlock()
	if before != nil {
		before()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail["deleteDispatch"]; err != nil {
		return err
	}
	for i, d := range f.ds[room] {
		if d.Id == id {
			f.ds[room] = append(f.ds[room][:i:i], f.ds[room][i+1:]...)
			return nil
		}
	}
	return errGone
}

func (f *fakeAPI) removeParticipant(_ context.Context, room, identity string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, room+"/"+identity)
	ps := f.parts[room][:0:0]
	for _, p := range f.parts[room] {
		if p.Identity != identity {
			ps = append(ps, p)
		}
	}
	f.parts[room] = ps
	return f.fail["removeParticipant"]
}

func (f *fakeAPI) createDispatch(_ context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail["createDispatch"]; err != nil {
		return nil, err
	}
	f.created = append(f.created, req)
	f.n++
	d := &livekit.AgentDispatch{Id: fmt.Sprintf("AD_%d", f.n), AgentName: req.AgentName, Room: req.Room, Metadata: req.Metadata,
		RestartPolicy: req.RestartPolicy, Deployment: req.Deployment, Attributes: maps.Clone(req.Attributes), ThreadId: req.ThreadId,
		State: &livekit.AgentDispatchState{CreatedAt: time.Now().UnixNano()}}
	f.ds[req.Room] = append(f.ds[req.Room], d)
	return d, nil
}

// testRestarter returns a Restarter over api with its own registry and a
// log that goes to the test, with o's limits.
func testRestarter(t *testing.T, api serverAPI, o Options) *Restarter {
	t.Helper()
	o.URL, o.APIKey, o.APISecret = "ws://127.0.0.1:1", "key", "secret"
	if o.Logger == nil {
		o.Logger = livekittest.Logger(t)
	}
	o, err := o.withDefaults(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	r, err := newRestarter(o, api)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// count returns the value of one counter of c.
func count(c *prometheus.CounterVec, labels ...string) int {
	return int(testutil.ToFloat64(c.WithLabelValues(labels...)))
}

func (f *fakeAPI) setBeforeDelete(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.beforeDelete = fn
}
