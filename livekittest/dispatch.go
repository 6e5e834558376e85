package livekittest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/dispatch"
)

const (
	// registrationSettle is how long Dispatch waits after the server
	// logged a worker's registration: the server registers the worker's
	// job topic and logs it, then tells its cache of agent names, on
	// another goroutine, to forget what it knew.
	registrationSettle = 250 * time.Millisecond
	// registrationWait bounds the wait for a registration line; after it
	// Dispatch dispatches anyway (a server whose log lines differ from
	// v1.13.5's is then handled by the retries alone).
	registrationWait = 10 * time.Second
	// dispatchPoll is how often the dispatch API is asked whether the
	// dispatch has a job.
	dispatchPoll = time.Second
	// maxRetryDelay caps the pause between two attempts.
	maxRetryDelay = 2 * time.Second
)

// patience is how long attempt n waits for the job of its dispatch when
// the server's log says nothing about it, before deleting the dispatch and
// trying again. The server usually decides within a second; it can take
// ~5 s when its cache of agent names is being rebuilt, and longer on a
// loaded machine.
func patience(attempt int) time.Duration {
	return min(time.Duration(5+5*attempt)*time.Second, 20*time.Second)
}

// Dispatch dispatches agentName, deployment ("" is production), to room
// with metadata and returns once a worker has accepted the job, dispatching
// again if the server dropped the job (see the package documentation). It
// returns the dispatch as the server created it: the server adds the job to
// the dispatch's State a few seconds later (see [Server.ListDispatches]).
// Retries are logged. It fails the test if no worker took the job within
// [Timeout].
func (s *Server) Dispatch(t testing.TB, room, agentName, deployment, metadata string) *livekit.AgentDispatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	d, err := s.dispatch(ctx, &livekit.CreateAgentDispatchRequest{
		Room: room, AgentName: agentName, Deployment: deployment, Metadata: metadata,
	}, t.Logf)
	if err != nil {
		t.Fatalf("livekittest: %v", err)
	}
	return d
}

// DispatchContext is [Server.Dispatch] with a request and bounded by ctx.
func (s *Server) DispatchContext(ctx context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error) {
	return s.dispatch(ctx, req, nil)
}

// dispatch implements Dispatch; logf, if set, reports retries.
func (s *Server) dispatch(ctx context.Context, req *livekit.CreateAgentDispatchRequest, logf func(string, ...any)) (*livekit.AgentDispatch, error) {
	what := fmt.Sprintf("agent %q, deployment %q, to room %q", req.GetAgentName(), req.GetDeployment(), req.GetRoom())
	var reasons []string
	s.waitRegistered(ctx, req.GetAgentName())
	fail := func(err error) error {
		err = fmt.Errorf("dispatch of %s: %w", what, err)
		if len(reasons) > 0 {
			err = fmt.Errorf("%w; %d attempts not taken: %s", err, len(reasons), strings.Join(compact(reasons), "; "))
		}
		if _, registered, _ := s.log.registeredAt(req.GetAgentName()); !registered {
			err = fmt.Errorf("%w (the server logged no registration of a worker of agent %q)", err, req.GetAgentName())
		}
		return err
	}
	trustAssigned := true
	delay := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		d, out, err := s.dispatchOnce(ctx, req, patience(attempt), trustAssigned)
		switch {
		case d != nil:
			return d, nil
		case err != nil:
			return nil, fail(err)
		}
		reasons = append(reasons, out.reason)
		// After a dispatch deleted for the server's silence, its job may
		// still be logged as assigned: trust only the dispatch API then.
		trustAssigned = !out.silent
		if logf != nil {
			logf("livekittest: dispatch of %s not taken (%s); dispatching again", what, out.reason)
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, fail(context.Cause(ctx))
		}
		delay = min(2*delay, maxRetryDelay)
	}
}

// waitRegistered waits until the server has logged the registration of a
// worker of agent and registrationSettle has passed since, for at most
// registrationWait.
func (s *Server) waitRegistered(ctx context.Context, agent string) {
	limit := time.NewTimer(registrationWait)
	defer limit.Stop()
	for {
		at, ok, changed := s.log.registeredAt(agent)
		if ok {
			if d := time.Until(at.Add(registrationSettle)); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
			}
			return
		}
		select {
		case <-changed:
		case <-limit.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// dispatchOnce creates one dispatch and waits for its outcome. It returns
// the dispatch if a worker took its job; otherwise it deletes it (so that
// no job of it can start later) and returns the outcome, or an error.
func (s *Server) dispatchOnce(ctx context.Context, req *livekit.CreateAgentDispatchRequest, patience time.Duration, trustAssigned bool) (*livekit.AgentDispatch, outcome, error) {
	done := s.track(req.GetRoom(), req.GetAgentName())
	defer done()
	mark, _ := s.log.mark()
	// A new room is created with its dispatch (no automatic agent job).
	d, err := dispatch.NewClient(s.URL, s.APIKey, s.APISecret).Create(ctx, req)
	if err != nil && ctx.Err() != nil {
		return nil, outcome{}, context.Cause(ctx)
	}
	if err != nil {
		return nil, outcome{}, fmt.Errorf("create dispatch: %w", err)
	}
	out, err := s.awaitJob(ctx, req, d, mark, patience, trustAssigned)
	if err == nil && out.taken {
		return d, out, nil
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, derr := s.dispatches.DeleteDispatch(dctx, &livekit.DeleteAgentDispatchRequest{DispatchId: d.GetId(), Room: d.GetRoom()})
	if err != nil {
		return nil, out, err
	}
	if derr != nil && !isNotFound(derr) {
		return nil, out, fmt.Errorf("delete dispatch %s, whose job no worker took: %w", d.GetId(), derr)
	}
	return nil, out, nil
}

// outcome is how the server dealt with the job of a dispatch.
type outcome struct {
	taken  bool   // a worker accepted it
	reason string // why not, for error reports
	silent bool   // not taken because the server said nothing in time
}

// awaitJob waits until the job of dispatch d (created after log event
// mark) was taken by a worker or dropped by the server.
//
// The dispatch API lists a job only once the server's whole placement
// round is over, which can be seconds after the worker took it. The
// server's log says it sooner, but its lines name a room and an agent
// name, not a dispatch: they are trusted only while no other dispatch of
// this Server for the same room and agent (or, for lines that name no
// room, for the same agent) is awaiting its job.
func (s *Server) awaitJob(ctx context.Context, req *livekit.CreateAgentDispatchRequest, d *livekit.AgentDispatch, mark uint64, patience time.Duration, trustAssigned bool) (outcome, error) {
	give := time.NewTimer(patience)
	defer give.Stop()
	poll := time.NewTicker(dispatchPoll)
	defer poll.Stop()
	room, agent := req.GetRoom(), req.GetAgentName()
	for {
		events, changed := s.log.since(mark)
		for _, ev := range events {
			sameRoom := ev.room == room && ev.agent == agent && s.alone(room, agent)
			switch ev.kind {
			case evAssigned:
				if sameRoom && trustAssigned {
					return outcome{taken: true}, nil
				}
			case evNotSent:
				if sameRoom && agent != "" {
					return outcome{reason: "server: " + ev.reason}, nil
				}
			case evRequestFailed:
				if ev.agent == agent && agent != "" && s.alone("", agent) {
					return outcome{reason: "server: " + ev.reason}, nil
				}
			}
		}
		select {
		case <-changed:
		case <-poll.C:
			res, err := s.dispatches.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: d.GetRoom(), DispatchId: d.GetId()})
			switch {
			case err != nil && ctx.Err() != nil:
				return outcome{}, context.Cause(ctx)
			case err != nil && !isNotFound(err):
				return outcome{}, fmt.Errorf("list dispatch %s: %w", d.GetId(), err)
			case len(res.GetAgentDispatches()) == 0:
				// A worker may have served it as a held dispatch:
				// deleted, and replaced by an identical one.
				if next := s.replacement(ctx, d); next != nil {
					d = next
					continue
				}
				return outcome{}, fmt.Errorf("dispatch %s is gone: deleted, or its room was closed", d.GetId())
			case len(res.GetAgentDispatches()[0].GetState().GetJobs()) > 0:
				return outcome{taken: true}, nil
			}
		case <-give.C:
			return outcome{reason: fmt.Sprintf("no word from the server on the job within %s", patience), silent: true}, nil
		case <-ctx.Done():
			return outcome{}, context.Cause(ctx)
		}
	}
}

// replacement finds the dispatch that replaced d (a held dispatch a
// worker served): the oldest of its room with d's agent name, deployment
// and metadata, created after d; nil if none.
func (s *Server) replacement(ctx context.Context, d *livekit.AgentDispatch) *livekit.AgentDispatch {
	res, err := s.dispatches.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: d.GetRoom()})
	if err != nil {
		return nil
	}
	var best *livekit.AgentDispatch
	for _, x := range res.GetAgentDispatches() {
		if x.GetAgentName() != d.GetAgentName() || x.GetDeployment() != d.GetDeployment() || x.GetMetadata() != d.GetMetadata() ||
			x.GetState().GetCreatedAt() <= d.GetState().GetCreatedAt() {
			continue
		}
		if best == nil || x.GetState().GetCreatedAt() < best.GetState().GetCreatedAt() {
			best = x
		}
	}
	return best
}

// track counts a dispatch of agent to room as awaiting its job until the
// returned function is called.
func (s *Server) track(room, agent string) (done func()) {
	s.mu.Lock()
	s.inflight[inflightKey(room, agent)]++
	s.inflight[inflightKey("", agent)]++
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, k := range []string{inflightKey(room, agent), inflightKey("", agent)} {
			if s.inflight[k]--; s.inflight[k] == 0 {
				delete(s.inflight, k)
			}
		}
	}
}

// alone reports whether a single dispatch of agent to room (to any room if
// room is "") awaits its job.
func (s *Server) alone(room, agent string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight[inflightKey(room, agent)] == 1
}

func inflightKey(room, agent string) string { return room + "\x00" + agent }

// compact returns reasons with runs of the same reason counted.
func compact(reasons []string) []string {
	var out []string
	for i := 0; i < len(reasons); {
		j := i + 1
		for j < len(reasons) && reasons[j] == reasons[i] {
			j++
		}
		if n := j - i; n > 1 {
			out = append(out, fmt.Sprintf("%s (%d times)", reasons[i], n))
		} else {
			out = append(out, reasons[i])
		}
		i = j
	}
	return out
}
