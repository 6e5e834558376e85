package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// Dispatches to canary made while no canary worker is registered are
// dropped by the server; two canary workers starting seconds later serve
// each of them exactly once (held dispatches), and never one deleted
// before they started.
func TestHeldDispatchesServedOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("real server")
	}
	t.Parallel()
	heldScenario(t, srv, srv)
}

// The same on a two-node cluster: dispatches through node A, workers on
// node B.
func TestHeldDispatchesServedOnceCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("real server")
	}
	t.Parallel()
	nodeA, nodeB := startCluster(t)
	heldScenario(t, nodeA, nodeB)
}

// heldWorkersStartAfter is the scenario's pause between the dispatches and
// the start of the canary workers (a rollout, a crash loop, a scale from
// zero): the server has dropped the jobs long before.
const heldWorkersStartAfter = 2 * time.Second

func heldScenario(t *testing.T, via, on *lkserver.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	agent := uniq("held")
	dc := lksdk.NewAgentDispatchServiceClient(via.HTTPURL(), via.APIKey(), via.APISecret())

	// 1. CreateDispatch to canary, no canary worker anywhere.
	apiRoom := uniq("orphan")
	_, err := dc.CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{AgentName: agent, Room: apiRoom, Deployment: "canary", Metadata: "api"})
	if err != nil {
		t.Fatal(err)
	}
	// 2. A caller joins with a token whose room configuration dispatches
	// canary, and stays.
	tokenRoom := uniq("token")
	tok, err := auth.NewAccessToken(via.APIKey(), via.APISecret()).SetIdentity("caller").
		SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: tokenRoom}).
		SetAgents(&livekit.RoomAgentDispatch{AgentName: agent, Deployment: "canary", Metadata: "token"}).ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	caller, err := lksdk.ConnectToRoomWithToken(via.URL(), tok, &lksdk.RoomCallback{}, lksdk.WithAutoSubscribe(false))
	if err != nil {
		t.Fatalf("caller join: %v", err)
	}
	t.Cleanup(caller.Disconnect)
	// 3. A dispatch deleted before any worker starts.
	goneRoom := uniq("deleted")
	goneD, err := dc.CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{AgentName: agent, Room: goneRoom, Deployment: "canary"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dc.DeleteDispatch(ctx, &livekit.DeleteAgentDispatchRequest{Room: goneRoom, DispatchId: goneD.Id}); err != nil {
		t.Fatal(err)
	}

	time.Sleep(heldWorkersStartAfter) // the scenario's pause, not a wait for a condition
	for _, room := range []string{apiRoom, tokenRoom} {
		res, err := dc.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: room})
		if err != nil || len(res.AgentDispatches) == 0 {
			t.Fatalf("room %s: dispatches %v, %v", room, res, err)
		}
		for _, d := range res.AgentDispatches {
			if d.AgentName == agent && len(d.GetState().GetJobs()) > 0 {
				t.Fatalf("room %s: the canary dispatch has a job before any canary worker started", room)
			}
		}
	}

	var mu sync.Mutex
	runs := map[string]int{} // room → runs
	served := make(chan string, 16)
	handle := func(ctx context.Context, j *job.Job) error {
		mu.Lock()
		runs[j.RoomName()]++
		mu.Unlock()
		served <- j.RoomName()
		<-ctx.Done()
		return nil
	}
	started := time.Now()
	var workers []*worker.Worker
	recoveries := make(chan worker.Event, 16)
	for range 2 {
		o := worker.Options{AgentName: agent, Deployment: "canary", URL: on.URL(), APIKey: on.APIKey(), APISecret: on.APISecret()}
		testDefaults(t, &o)
		w, err := worker.New(o, handle)
		if err != nil {
			t.Fatal(err)
		}
		sub := w.Subscribe(worker.EventRecovered) // before it starts: its first sweep follows its registration
		t.Cleanup(sub.Close)
		go func() {
			for e := range sub.C {
				recoveries <- e
			}
		}()
		if err := w.Start(ctx); err != nil {
			t.Fatalf("worker did not register: %v", err)
		}
		t.Cleanup(func() {
			sctx, cancel := context.WithTimeout(context.Background(), o.DrainTimeout)
			defer cancel()
			_ = w.Stop(sctx)
		})
		workers = append(workers, w)
	}

	want := map[string]bool{apiRoom: true, tokenRoom: true}
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for len(want) > 0 {
		select {
		case room := <-served:
			if !want[room] {
				t.Fatalf("a job ran for room %s (runs: %v)", room, runs)
			}
			delete(want, room)
			t.Logf("held dispatch of room %s served %s after the workers started", room, time.Since(started).Round(time.Millisecond))
		case <-deadline.C:
			t.Fatalf("within 30 s of the workers' start, not served: %v", want)
		}
	}
	// Exactly once: no second run, through another sweep of each worker
	// (a sweep that took a served dispatch for a held one would re-create
	// it after HeldAfter).
	quiet := time.NewTimer(worker.DefaultHeldAfter + 5*time.Second)
	defer quiet.Stop()
	select {
	case room := <-served:
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("a second job ran, for room %s (runs: %v)", room, runs)
	case <-quiet.C:
	}
	var recovered int64
	for _, w := range workers {
		recovered += w.HeldRecovered()
	}
	if recovered != 2 {
		t.Fatalf("the workers recovered %d held dispatches, want 2", recovered)
	}
	// Each served dispatch was told as an EventRecovered, once, naming the
	// dispatch that replaced it.
	recoveredRooms := map[string]string{} // room → new dispatch
	for len(recoveredRooms) < 2 {
		select {
		case e := <-recoveries:
			if _, dup := recoveredRooms[e.Room]; dup || (e.Room != apiRoom && e.Room != tokenRoom) || e.DispatchID == "" {
				t.Fatalf("EventRecovered %+v (so far %v)", e, recoveredRooms)
			}
			recoveredRooms[e.Room] = e.DispatchID
		case <-ctx.Done():
			t.Fatalf("EventRecovered for %v only", recoveredRooms)
		}
	}
	select {
	case e := <-recoveries:
		t.Fatalf("a third EventRecovered: %+v", e)
	default:
	}
	// The served dispatches kept their metadata; the deleted one stayed
	// deleted.
	for room, md := range map[string]string{apiRoom: "api", tokenRoom: "token"} {
		res, err := dc.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: room})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, d := range res.AgentDispatches {
			if d.AgentName == agent {
				n++
				if d.Id != recoveredRooms[room] {
					t.Errorf("room %s: dispatch %s, but EventRecovered named %s", room, d.Id, recoveredRooms[room])
				}
				if d.Metadata != md || d.Deployment != "canary" || len(d.GetState().GetJobs()) != 1 {
					t.Fatalf("room %s: dispatch %v, want metadata %q, canary, one job", room, d, md)
				}
			}
		}
		if n != 1 {
			t.Fatalf("room %s has %d dispatches of the agent, want 1", room, n)
		}
	}
	if res, err := dc.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: goneRoom}); err == nil {
		for _, d := range res.AgentDispatches {
			if d.AgentName == agent {
				t.Fatalf("the deleted dispatch came back: %v", d)
			}
		}
	}
}
