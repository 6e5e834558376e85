package worker

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/lkagent/lkagent/internal/wire"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker/workertest"
)

const (
	fuzzAgent      = "fuzz-bot"
	fuzzDeployment = "staging"
)

// fuzzFrames joins frames into one fuzz input: each frame is prefixed by
// its length as a varint.
func fuzzFrames(frames ...[]byte) []byte {
	var out []byte
	for _, f := range frames {
		out = protowire.AppendBytes(out, f)
	}
	return out
}

// splitFrames undoes fuzzFrames; a tail that is not a length-prefixed
// frame is one more frame as it is.
func splitFrames(data []byte) [][]byte {
	var frames [][]byte
	for len(data) > 0 && len(frames) < 64 {
		f, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return append(frames, data)
		}
		frames = append(frames, f)
		data = data[n:]
	}
	return frames
}

func fuzzMsg(m *livekit.ServerMessage) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func fuzzJob(id, agentName, deployment string, typ livekit.JobType) *livekit.Job {
	return &livekit.Job{Id: id, AgentName: agentName, Deployment: deployment, Type: typ,
		Room: &livekit.Room{Name: "room-" + id}}
}

func offerMsg(j *livekit.Job) []byte {
	return fuzzMsg(&livekit.ServerMessage{Message: &livekit.ServerMessage_Availability{
		Availability: &livekit.AvailabilityRequest{Job: j}}})
}

func assignMsg(j *livekit.Job) []byte {
	return fuzzMsg(&livekit.ServerMessage{Message: &livekit.ServerMessage_Assignment{
		Assignment: &livekit.JobAssignment{Job: j, Token: "t"}}})
}

func terminateMsg(id string) []byte {
	return fuzzMsg(&livekit.ServerMessage{Message: &livekit.ServerMessage_Termination{
		Termination: &livekit.JobTermination{JobId: id}}})
}

// FuzzServerMessage feeds a sequence of arbitrary frames, as the server
// would send them on one connection, through the worker's inbound message
// handling. The worker must never panic, never run a job that is not of
// its own agent name, deployment and job type, never run a job it did not
// accept, and never run a job twice.
func FuzzServerMessage(f *testing.F) {
	own := fuzzJob("AJ_own", fuzzAgent, fuzzDeployment, livekit.JobType_JT_ROOM)
	other := fuzzJob("AJ_other", "other-bot", fuzzDeployment, livekit.JobType_JT_ROOM)
	prod := fuzzJob("AJ_prod", fuzzAgent, "", livekit.JobType_JT_ROOM)
	canary := fuzzJob("AJ_canary", fuzzAgent, "canary", livekit.JobType_JT_ROOM)
	publisher := fuzzJob("AJ_pub", fuzzAgent, fuzzDeployment, livekit.JobType_JT_PUBLISHER)
	swapped := fuzzJob("AJ_own", "other-bot", "", livekit.JobType_JT_ROOM) // same id as own
	pong := fuzzMsg(&livekit.ServerMessage{Message: &livekit.ServerMessage_Pong{Pong: &livekit.WorkerPong{LastTimestamp: 1, Timestamp: 2}}})
	goAway := fuzzMsg(&livekit.ServerMessage{Message: &livekit.ServerMessage_GoAway{GoAway: &livekit.AgentHttp_GoAway{}}})
	register := fuzzMsg(&livekit.ServerMessage{Message: &livekit.ServerMessage_Register{Register: &livekit.RegisterWorkerResponse{WorkerId: "AW_x"}}})

	f.Add(fuzzFrames(offerMsg(own), assignMsg(own)))
	f.Add(fuzzFrames(offerMsg(own), assignMsg(own), terminateMsg(own.Id)))
	f.Add(fuzzFrames(offerMsg(own), offerMsg(own), assignMsg(own), assignMsg(own)))
	f.Add(fuzzFrames(offerMsg(own), assignMsg(swapped)))
	f.Add(fuzzFrames(offerMsg(own), goAway, assignMsg(own)))
	f.Add(fuzzFrames(offerMsg(own), terminateMsg(own.Id), assignMsg(own)))
	for _, j := range []*livekit.Job{other, prod, canary, publisher} {
		f.Add(fuzzFrames(offerMsg(j), assignMsg(j)))
		f.Add(fuzzFrames(assignMsg(j)))
	}
	f.Add(fuzzFrames(pong, goAway, register))
	f.Add(fuzzFrames(workertest.UnknownMessage(), offerMsg(own), assignMsg(own)))
	f.Add(fuzzFrames([]byte{0xff, 0xff, 0xff}, offerMsg(own), assignMsg(own)))
	f.Add(fuzzFrames(fuzzMsg(&livekit.ServerMessage{Message: &livekit.ServerMessage_Availability{Availability: &livekit.AvailabilityRequest{}}})))
	f.Add(fuzzFrames(fuzzMsg(&livekit.ServerMessage{Message: &livekit.ServerMessage_Assignment{Assignment: &livekit.JobAssignment{}}})))
	// Jobs that hold their slot until the end: the third and fourth wait in
	// the queue, the fifth is declined (MaxJobs 2, MaxQueued 2).
	var held [][]byte
	for _, id := range []string{"AJ_h1", "AJ_h2", "AJ_h3", "AJ_h4", "AJ_h5"} {
		j := fuzzJob(id, fuzzAgent, fuzzDeployment, livekit.JobType_JT_ROOM)
		j.Metadata = "hold"
		held = append(held, offerMsg(j), assignMsg(j))
	}
	f.Add(fuzzFrames(held...))
	f.Add(fuzzFrames(append(held, terminateMsg("AJ_h3"), terminateMsg("AJ_h1"))...))
	f.Add([]byte{})
	f.Add([]byte("not a frame at all"))

	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzWorker(t, splitFrames(data))
	})
}

func fuzzWorker(t *testing.T, frames [][]byte) {
	var mu sync.Mutex
	var ran []*job.Job
	var running, peak int
	const maxJobs = 2
	handler := func(ctx context.Context, j *job.Job) error {
		mu.Lock()
		ran = append(ran, j)
		running++
		peak = max(peak, running)
		mu.Unlock()
		defer func() {
			mu.Lock()
			running--
			mu.Unlock()
		}()
		if j.Metadata() == "hold" {
			<-ctx.Done()
		}
		return nil
	}
	w, err := newWorker(Options{
		URL: "ws://127.0.0.1:1", APIKey: "key", APISecret: "secret",
		AgentName: fuzzAgent, Deployment: fuzzDeployment,
		Logger:  slog.New(slog.DiscardHandler),
		MaxJobs: maxJobs, MaxQueued: 2,
	}, handler, noEnv)
	if err != nil {
		t.Fatal(err)
	}

	// Everything the worker sends, on any of its connections.
	out := make(chan *livekit.WorkerMessage, 256)
	var sent []*livekit.WorkerMessage
	stop := make(chan struct{})
	var drainer sync.WaitGroup
	drainer.Add(1)
	go func() {
		defer drainer.Done()
		for {
			select {
			case m := <-out:
				mu.Lock()
				sent = append(sent, m)
				mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	connect := func() *session {
		s := &session{w: w, out: out, reg: &livekit.RegisterWorkerResponse{WorkerId: "AW_fuzz"},
			kick: make(chan struct{}, 1), status: make(chan struct{}, 1),
			registered: make(chan struct{}), done: make(chan struct{})}
		s.regOnce.Do(func() { close(s.registered) })
		w.mu.Lock()
		w.sess = s
		w.mu.Unlock()
		return s
	}
	// A connection that ends is replaced, as the worker's reconnect does.
	reconnect := func(s *session, err error) *session {
		s.fail(err)
		w.unpublish(s)
		return connect()
	}

	sub := w.Subscribe()
	defer sub.Close()
	jobCtx, cancel := context.WithCancelCause(context.Background())
	s := connect()
	for _, b := range frames {
		m := &livekit.ServerMessage{}
		if err := proto.Unmarshal(b, m); err != nil {
			s = reconnect(s, wire.New(wire.Malformed, "read", wire.ErrFrame)) // what a read's error does
			continue
		}
		w.dispatch(s, jobCtx, m, time.Now())
		// The server waits for the answer to an offer before it assigns.
		w.bg.Wait()
		checkTable(t, w, maxJobs)
		select {
		case <-s.done:
			s = reconnect(s, s.closeErr)
		default:
		}
	}
	w.cancelAllJobs(job.ErrWorkerStopped) // fails queued jobs, cancels running ones
	cancel(job.ErrWorkerStopped)
	w.jobWG.Wait()
	w.bg.Wait()
	w.userWG.Wait()
	w.unpublish(s)
	close(stop)
	drainer.Wait()
	for len(out) > 0 {
		sent = append(sent, <-out)
	}

	accepted := map[string]bool{}
	for _, m := range sent {
		if a := m.GetAvailability(); a.GetAvailable() {
			accepted[a.GetJobId()] = true
		}
	}
	seen := map[string]bool{}
	for _, j := range ran {
		if j.AgentName() != fuzzAgent || j.Deployment() != fuzzDeployment || j.Info().GetType() != livekit.JobType_JT_ROOM {
			t.Fatalf("ran job %q of agent %q, deployment %q, type %s: not this worker's (%q, %q, JT_ROOM)",
				j.ID(), j.AgentName(), j.Deployment(), j.Info().GetType(), fuzzAgent, fuzzDeployment)
		}
		if !accepted[j.ID()] {
			t.Fatalf("ran job %q that the worker never accepted", j.ID())
		}
		if seen[j.ID()] {
			t.Fatalf("ran job %q twice", j.ID())
		}
		seen[j.ID()] = true
	}
	if peak > maxJobs {
		t.Fatalf("%d handlers ran at once, MaxJobs is %d", peak, maxJobs)
	}
	checkEvents(t, sub, seen)
	checkTable(t, w, maxJobs)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.table.assigned() != 0 || len(w.table.reserved) != 0 || w.table.queued() != 0 {
		t.Fatalf("%d jobs, %d queued and %d reservations left after every handler returned",
			w.table.assigned(), w.table.queued(), len(w.table.reserved))
	}
	for _, j := range ran {
		if !w.table.recent.has(j.ID()) {
			t.Fatalf("job %q ran but is not remembered as ended", j.ID())
		}
	}
}

// checkTable fails t if the worker's job table breaks an invariant: each
// entry in the collection of its state, each queued job once, no more
// jobs holding a slot than maxJobs, nothing both assigned and ended.
func checkTable(t *testing.T, w *Worker, maxJobs int) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if bad := w.table.check(); bad != "" {
		t.Fatalf("job table: %s", bad)
	}
	if n := w.table.running(); n > maxJobs {
		t.Fatalf("job table: %d jobs hold a slot, MaxJobs is %d", n, maxJobs)
	}
}

// checkEvents checks the job events of a run against a job's states: every
// job was offered before anything else happened to it; it was queued,
// started and ended at most once each, in that order; ended only after it
// was queued or started, and every queued or started job ended; declines
// say why; the jobs started are those whose handler ran; nothing dropped.
func checkEvents(t *testing.T, sub *Subscription, ran map[string]bool) {
	t.Helper()
	if n := sub.Dropped(); n != 0 {
		t.Fatalf("%d events dropped", n)
	}
	type state struct{ offered, queued, started, ended bool }
	jobs := map[string]*state{}
	for len(sub.C) > 0 {
		e := <-sub.C
		st := jobs[e.JobID]
		if st == nil {
			st = &state{}
			jobs[e.JobID] = st
		}
		if e.Kind != EventOffered && !st.offered {
			t.Fatalf("job %s: %s before it was offered", e.JobID, e.Kind)
		}
		bad := false
		switch e.Kind {
		case EventOffered:
			st.offered = true
		case EventDeclined:
			bad = e.Reason == ""
		case EventQueued:
			bad = st.queued || st.started || st.ended
			st.queued = true
		case EventStarted:
			bad = st.started || st.ended
			st.started = true
		case EventEnded:
			bad = st.ended || !(st.queued || st.started) || e.Status == ""
			st.ended = true
		}
		if bad {
			t.Fatalf("job %s: %+v in state %+v", e.JobID, e, *st)
		}
	}
	for id, st := range jobs {
		if (st.queued || st.started) && !st.ended {
			t.Fatalf("job %s was queued or started and never ended", id)
		}
		if st.started != ran[id] {
			t.Fatalf("job %s: started event %v, handler ran %v", id, st.started, ran[id])
		}
	}
}
