package jobrt

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/livekittest"
)

// The tests below that need a LiveKit server share one.
var shared livekittest.Shared

func TestMain(m *testing.M) {
	lksdk.SetLogger(lklogger.GetDiscardLogger())
	os.Exit(shared.Run(m))
}

// patience bounds the waits on the server. Generous: a participant learns
// of another who publishes nothing only seconds after it joined, and the
// machine may be slow.
const patience = livekittest.Timeout

// roomJob is a job built as the worker builds one, for a room of srv, with
// a real join token and the server's API credentials. It is finished when
// the test ends.
func roomJob(t *testing.T, srv *livekittest.Server, room string) (*Job, *Control) {
	t.Helper()
	identity := livekittest.UniqueName("agent")
	token, err := auth.NewAccessToken(srv.APIKey, srv.APISecret).
		SetIdentity(identity).
		SetKind(livekit.ParticipantInfo_AGENT).
		SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: room, Agent: true}).
		ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	j, ctl := New(context.Background(), Params{
		Info:     &livekit.Job{Id: livekittest.UniqueName("AJ"), Room: &livekit.Room{Name: room}},
		Identity: identity,
		URL:      srv.URL,
		Token:    token,
		APIURL:   srv.HTTPURL,
		APIKey:   srv.APIKey, APISecret: srv.APISecret,
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctl.Finish(ctx, nil)
	})
	return j, ctl
}

// connect joins j's room with cb.
func connect(t *testing.T, j *Job, cb *lksdk.RoomCallback) *lksdk.Room {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	room, err := j.Connect(ctx, cb)
	if err != nil {
		t.Fatal(err)
	}
	return room
}

// joinAs joins room as identity with the given kind, and leaves when the
// test ends.
func joinAs(t *testing.T, srv *livekittest.Server, room, identity string, kind livekit.ParticipantInfo_Kind) *livekittest.Caller {
	t.Helper()
	token, err := srv.Token(room, identity).SetKind(kind).ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	return srv.JoinWithToken(t, token)
}

type waitResult struct {
	p   *lksdk.RemoteParticipant
	err error
}

// waitAsync runs WaitForParticipant on a goroutine; the result arrives on
// the channel.
func waitAsync(ctx context.Context, j *Job, opts ...ParticipantOption) <-chan waitResult {
	res := make(chan waitResult, 1)
	go func() {
		p, err := j.WaitForParticipant(ctx, opts...)
		res <- waitResult{p, err}
	}()
	return res
}

func receive(t *testing.T, res <-chan waitResult, what string) waitResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(patience):
		t.Fatalf("%s: WaitForParticipant did not return within %s", what, patience)
		return waitResult{}
	}
}

// notWithin fails the test if res has a result within d: the time a wrong
// answer has to arrive.
func notWithin(t *testing.T, res <-chan waitResult, d time.Duration, what string) {
	t.Helper()
	select {
	case r := <-res:
		t.Fatalf("%s: WaitForParticipant returned early: %v, %v", what, r.p, r.err)
	case <-time.After(d):
	}
}

func TestWaitForParticipantAlreadyInTheRoom(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	room := livekittest.UniqueName("room")
	srv.Join(t, room, "caller")
	j, _ := roomJob(t, srv, room)
	connect(t, j, nil)

	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	p, err := j.WaitForParticipant(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.Identity() != "caller" {
		t.Fatalf("participant %q, want caller", p.Identity())
	}
}

// A participant who joins while WaitForParticipant waits is found; another
// agent is not a participant by default, but WithKind finds it. The
// callbacks given to Connect still see every event.
func TestWaitForParticipantJoiningLaterIgnoresAgents(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	room := livekittest.UniqueName("room")
	j, _ := roomJob(t, srv, room)
	var mu sync.Mutex
	var seen []string
	cb := lksdk.NewRoomCallback()
	cb.OnParticipantConnected = func(p *lksdk.RemoteParticipant) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, p.Identity())
	}
	connect(t, j, cb)

	ctx, cancel := context.WithTimeout(context.Background(), 2*patience)
	defer cancel()
	anyone := waitAsync(ctx, j)
	joinAs(t, srv, room, "other-agent", livekit.ParticipantInfo_AGENT)
	agent := receive(t, waitAsync(ctx, j, WithKind(livekit.ParticipantInfo_AGENT)), "agent kind")
	if agent.err != nil || agent.p.Identity() != "other-agent" {
		t.Fatalf("WithKind(AGENT): %v, %v", agent.p, agent.err)
	}
	notWithin(t, anyone, 300*time.Millisecond, "only an agent in the room")

	srv.Join(t, room, "caller")
	r := receive(t, anyone, "caller joined")
	if r.err != nil || r.p.Identity() != "caller" {
		t.Fatalf("WaitForParticipant = %v, %v; want caller", r.p, r.err)
	}
	livekittest.Eventually(t, patience, "caller and other-agent seen by the user's OnParticipantConnected", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(seen, "caller") && slices.Contains(seen, "other-agent")
	})
}

func TestWaitForParticipantByIdentity(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	room := livekittest.UniqueName("room")
	srv.Join(t, room, "alice")
	srv.Join(t, room, "bob")
	j, _ := roomJob(t, srv, room)
	connect(t, j, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 2*patience)
	defer cancel()
	r := receive(t, waitAsync(ctx, j, WithIdentity("bob")), "bob")
	if r.err != nil || r.p.Identity() != "bob" {
		t.Fatalf("WithIdentity(bob) = %v, %v", r.p, r.err)
	}
	carol := waitAsync(ctx, j, WithIdentity("carol"))
	// Bob and Alice are there, and not Carol: the wait goes on.
	notWithin(t, carol, 500*time.Millisecond, "carol not in the room")
	srv.Join(t, room, "carol")
	if r := receive(t, carol, "carol"); r.err != nil || r.p.Identity() != "carol" {
		t.Fatalf("WithIdentity(carol) = %v, %v", r.p, r.err)
	}
}

// WaitForParticipant ends with its context, and with the job.
func TestWaitForParticipantEnds(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	room := livekittest.UniqueName("room")
	j, ctl := roomJob(t, srv, room)
	connect(t, j, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := j.WaitForParticipant(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("after the deadline: %v, want DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	res := waitAsync(ctx, j)
	cancel()
	if r := receive(t, res, "cancelled"); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("after cancel: %v, want Canceled", r.err)
	}

	res = waitAsync(context.Background(), j)
	ctl.Cancel(ErrTerminated)
	r := receive(t, res, "job terminated")
	if !errors.Is(r.err, ErrTerminated) || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("after the job's end: %v, want ErrTerminated and Canceled", r.err)
	}
	// The handler returning that error ends the job as terminated: success.
	if outcome := Outcome(ctl.Context(), r.err); outcome != nil {
		t.Fatalf("outcome %v, want success", outcome)
	}
}

// served records what a participant entrypoint saw.
type served struct {
	identity string
	cause    error // why its context ended
}

// The participant entrypoint runs once per participant session (present
// before, joining later, joining again), not for agents, with a context
// that ends when that participant leaves or when the job ends; the job's
// end waits for it.
func TestOnParticipant(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	room := livekittest.UniqueName("room")
	alice := srv.Join(t, room, "alice")
	j, ctl := roomJob(t, srv, room)
	started := make(chan string, 16)
	ended := make(chan served, 16)
	// Registered before Connect: takes effect once joined.
	j.OnParticipant(func(ctx context.Context, p *lksdk.RemoteParticipant) {
		started <- p.Identity()
		<-ctx.Done()
		time.Sleep(100 * time.Millisecond) // saying goodbye
		ended <- served{p.Identity(), context.Cause(ctx)}
	})
	connect(t, j, nil)
	next := func(what string) string {
		t.Helper()
		select {
		case id := <-started:
			return id
		case <-time.After(patience):
			t.Fatalf("%s: no entrypoint started", what)
			return ""
		}
	}
	nextEnd := func(what string) served {
		t.Helper()
		select {
		case s := <-ended:
			return s
		case <-time.After(patience):
			t.Fatalf("%s: no entrypoint's context ended", what)
			return served{}
		}
	}

	if id := next("alice present"); id != "alice" {
		t.Fatalf("first entrypoint for %q, want alice", id)
	}
	joinAs(t, srv, room, "other-agent", livekit.ParticipantInfo_AGENT)
	srv.Join(t, room, "bob")
	if id := next("bob joined"); id != "bob" {
		t.Fatalf("second entrypoint for %q, want bob (agents are not served)", id)
	}

	alice.Leave()
	if s := nextEnd("alice left"); s.identity != "alice" || !errors.Is(s.cause, ErrParticipantLeft) {
		t.Fatalf("ended %+v, want alice with ErrParticipantLeft", s)
	}
	srv.Join(t, room, "alice")
	if id := next("alice again"); id != "alice" {
		t.Fatalf("entrypoint for %q, want alice again", id)
	}
	select {
	case id := <-started:
		t.Fatalf("an extra entrypoint started for %q", id)
	default:
	}

	// The job ends: both entrypoints' contexts end, and Finish waits for
	// them to return.
	ctl.Cancel(ErrTerminated)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if outcome := ctl.Finish(ctx, context.Canceled); outcome != nil {
		t.Fatalf("outcome %v", outcome)
	}
	var ids []string
	for range 2 {
		select {
		case s := <-ended: // already there: Finish waited
			if !errors.Is(s.cause, ErrTerminated) {
				t.Errorf("%s's context ended with %v, want ErrTerminated", s.identity, s.cause)
			}
			ids = append(ids, s.identity)
		default:
			t.Fatalf("Finish returned before the entrypoints did (ended: %v)", ids)
		}
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"alice", "bob"}) {
		t.Fatalf("entrypoints ended for %v, want alice and bob", ids)
	}
}

// A panic in a participant entrypoint fails the job, not the process.
func TestOnParticipantPanicFailsTheJob(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	room := livekittest.UniqueName("room")
	srv.Join(t, room, "caller")
	j, ctl := roomJob(t, srv, room)
	connect(t, j, nil)
	j.OnParticipant(func(context.Context, *lksdk.RemoteParticipant) { panic("entrypoint boom") },
		WithKind(livekit.ParticipantInfo_STANDARD))
	waitDone(t, ctl.Context(), "entrypoint panicked")
	pe, ok := errors.AsType[*PanicError](context.Cause(ctl.Context()))
	if !ok || pe.Where != "participant entrypoint" || pe.Value != "entrypoint boom" {
		t.Fatalf("cause %v, want the entrypoint's panic", context.Cause(ctl.Context()))
	}
	if outcome := ctl.Finish(context.Background(), context.Canceled); !errors.Is(outcome, pe) {
		t.Fatalf("outcome %v, want the panic", outcome)
	}
}

// API's clients reach the server with the worker's credentials.
func TestAPI(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	room := livekittest.UniqueName("room")
	j, _ := roomJob(t, srv, room)
	connect(t, j, nil)
	api, err := j.API()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := j.API(); again != api {
		t.Error("API built new clients on its second call")
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	res, err := api.Room.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: room})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetParticipants()) != 1 || res.GetParticipants()[0].GetIdentity() != j.Identity() {
		t.Fatalf("participants %v, want the job's agent %q only", res.GetParticipants(), j.Identity())
	}
	d, err := api.Dispatch.CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: "nobody", Deployment: "staging"})
	if err != nil {
		t.Fatal(err)
	}
	list, err := api.Dispatch.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: room, DispatchId: d.GetId()})
	if err != nil || len(list.GetAgentDispatches()) != 1 || list.GetAgentDispatches()[0].GetDeployment() != "staging" {
		t.Fatalf("ListDispatch = %v, %v", list, err)
	}
	if api.Egress == nil {
		t.Fatal("no egress client")
	}
}

// DeleteRoom ends the call for everyone, and the job with it (a success).
func TestDeleteRoom(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	room := livekittest.UniqueName("room")
	caller := srv.Join(t, room, "caller")
	j, ctl := roomJob(t, srv, room)
	connect(t, j, nil)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := j.DeleteRoom(ctx); err != nil {
		t.Fatal(err)
	}
	waitDone(t, ctl.Context(), "room deleted")
	if cause := context.Cause(ctl.Context()); !errors.Is(cause, ErrRoomDisconnected) {
		t.Fatalf("cause %v, want ErrRoomDisconnected", cause)
	}
	if outcome := ctl.Finish(ctx, ctl.Context().Err()); outcome != nil {
		t.Fatalf("outcome %v, want success", outcome)
	}
	if _, err := caller.WaitChatContext(ctx, nil); err == nil || !strings.Contains(err.Error(), "disconnected") {
		t.Fatalf("caller: %v, want disconnected", err)
	}
	rooms, err := srv.RoomClient().ListRooms(ctx, &livekit.ListRoomsRequest{Names: []string{room}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rooms.GetRooms()) != 0 {
		t.Fatalf("room still listed: %v", rooms.GetRooms())
	}
}

// A wrong secret gives an error that does not show it.
func TestAPIErrorHidesTheSecret(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	const secret = "wrong-secret-0123456789abcdef0123456789"
	j, _ := New(context.Background(), Params{
		Info:   &livekit.Job{Id: "AJ_w", Room: &livekit.Room{Name: livekittest.UniqueName("room")}},
		APIURL: srv.HTTPURL, APIKey: srv.APIKey, APISecret: secret,
	})
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	err := j.DeleteRoom(ctx)
	if err == nil {
		t.Fatal("DeleteRoom with a wrong secret succeeded")
	}
	t.Logf("error: %v", err)
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("error shows the secret: %v", err)
	}
}
