package workertest

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/proto"
)

func agentToken(t *testing.T, key, secret string, agent bool) string {
	t.Helper()
	tok, err := auth.NewAccessToken(key, secret).SetVideoGrant(&auth.VideoGrant{Agent: agent, RoomJoin: !agent}).
		SetValidFor(time.Minute).ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// rawClient is a hand-driven worker.
type rawClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func dialRaw(t *testing.T, srv *Server, token string) (*rawClient, *http.Response, error) {
	t.Helper()
	hdr := http.Header{}
	if token != "" {
		hdr.Set("Authorization", "Bearer "+token)
	}
	ws, resp, err := websocket.DefaultDialer.Dial(srv.URL()+"/agent", hdr)
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { ws.Close() })
	return &rawClient{t: t, ws: ws}, resp, nil
}

func (c *rawClient) send(m *livekit.WorkerMessage) {
	c.t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) read() (*livekit.ServerMessage, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	m := &livekit.ServerMessage{}
	return m, proto.Unmarshal(b, m)
}

func (c *rawClient) register(deployment string) (*livekit.ServerMessage, error) {
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Register{Register: &livekit.RegisterWorkerRequest{
		Type: livekit.JobType_JT_ROOM, AgentName: "raw", Deployment: deployment, InstanceId: "i1",
	}}})
	return c.read()
}

func TestAuthorization(t *testing.T) {
	t.Parallel()
	open := NewServer(t)
	keyed := NewServerWithOptions(t, Options{APIKeys: map[string]string{"k": "s"}})
	rejecting := NewServerWithOptions(t, Options{RejectAuth: true})
	for _, tc := range []struct {
		name  string
		srv   *Server
		token string
		ok    bool
	}{
		{"any key", open, agentToken(t, "any", "thing", true), true},
		{"no token", open, "", false},
		{"malformed token", open, "not-a-jwt", false},
		{"token without the agent grant", open, agentToken(t, "any", "thing", false), false},
		{"configured key", keyed, agentToken(t, "k", "s", true), true},
		{"wrong secret", keyed, agentToken(t, "k", "wrong", true), false},
		{"unknown key", keyed, agentToken(t, "other", "s", true), false},
		{"configured key without the agent grant", keyed, agentToken(t, "k", "s", false), false},
		{"RejectAuth", rejecting, agentToken(t, "any", "thing", true), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, resp, err := dialRaw(t, tc.srv, tc.token)
			if tc.ok {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				return
			}
			if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
				code := 0
				if resp != nil {
					code = resp.StatusCode
				}
				t.Fatalf("dial = %v, HTTP %d; want 401", err, code)
			}
		})
	}
	if n := rejecting.Attempts(); n != 1 {
		t.Errorf("Attempts = %d, want 1", n)
	}
}

func TestRegistrationHandshake(t *testing.T) {
	t.Parallel()
	srv := NewServerWithOptions(t, Options{RegisterDelay: 200 * time.Millisecond})
	c, _, err := dialRaw(t, srv, agentToken(t, "k", "s", true))
	if err != nil {
		t.Fatal(err)
	}
	// A ping before the registration is answered.
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Ping{Ping: &livekit.WorkerPing{Timestamp: 7}}})
	if m, err := c.read(); err != nil || m.GetPong().GetLastTimestamp() != 7 {
		t.Fatalf("answer to a ping: %v %v", m, err)
	}
	start := time.Now()
	m, err := c.register("staging")
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("registration answered after %s, before the RegisterDelay", took)
	}
	if !strings.HasPrefix(m.GetRegister().GetWorkerId(), "AW_") {
		t.Fatalf("registration answer %v", m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := srv.WaitWorker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if conn.WorkerID() != m.GetRegister().GetWorkerId() || conn.Registration().GetDeployment() != "staging" || conn.APIKey() != "k" {
		t.Errorf("conn %s deployment %q key %q", conn.WorkerID(), conn.Registration().GetDeployment(), conn.APIKey())
	}

	// Pongs stop and resume.
	conn.StopPongs()
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Ping{Ping: &livekit.WorkerPing{Timestamp: 8}}})
	// Messages are handled in order: once this status is recorded, the
	// server has dealt with the ping.
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateWorker{UpdateWorker: &livekit.UpdateWorkerStatus{Seq: 99}}})
	if _, err := conn.WaitWorkerStatus(ctx, func(u *livekit.UpdateWorkerStatus) bool { return u.GetSeq() == 99 }); err != nil {
		t.Fatal(err)
	}
	conn.ResumePongs()
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Ping{Ping: &livekit.WorkerPing{Timestamp: 9}}})
	if m, err := c.read(); err != nil || m.GetPong().GetLastTimestamp() != 9 {
		t.Fatalf("after StopPongs and ResumePongs: %v %v, want only the pong for 9", m, err)
	}
}

func TestInvalidRegistrationsRefused(t *testing.T) {
	t.Parallel()
	srv := NewServer(t)
	for _, deployment := range []string{"prod_us", "with space", strings.Repeat("d", 65)} {
		c, _, err := dialRaw(t, srv, agentToken(t, "k", "s", true))
		if err != nil {
			t.Fatal(err)
		}
		if m, err := c.register(deployment); err == nil {
			t.Errorf("deployment %q: answered %v, want the connection closed", deployment, m)
		}
	}
	c, _, err := dialRaw(t, srv, agentToken(t, "k", "s", true))
	if err != nil {
		t.Fatal(err)
	}
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Register{Register: &livekit.RegisterWorkerRequest{
		Type: livekit.JobType(42), AgentName: "raw"}}})
	if m, err := c.read(); err == nil {
		t.Errorf("bad job type: answered %v, want the connection closed", m)
	}
	if n := len(srv.Workers()); n != 0 {
		t.Errorf("%d refused registrations published", n)
	}
}

func TestOfferTimeoutAndAnswers(t *testing.T) {
	t.Parallel()
	srv := NewServerWithOptions(t, Options{OfferTimeout: 300 * time.Millisecond})
	c, _, err := dialRaw(t, srv, agentToken(t, "k", "s", true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.register(""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := srv.WaitWorker(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Unanswered: the offer times out.
	j := NewJob("raw", "")
	if _, err := conn.Offer(ctx, j); err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("unanswered offer = %v, want a timeout", err)
	}
	if _, err := c.read(); err != nil { // the offer itself
		t.Fatal(err)
	}

	// Answered, and the job reported.
	res := make(chan *livekit.AvailabilityResponse, 1)
	go func() {
		r, err := conn.Offer(ctx, j)
		if err != nil {
			t.Error(err)
		}
		res <- r
	}()
	m, err := c.read()
	if err != nil || m.GetAvailability().GetJob().GetId() != j.GetId() {
		t.Fatalf("offer received: %v %v", m, err)
	}
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Availability{Availability: &livekit.AvailabilityResponse{
		JobId: j.GetId(), Available: true, ParticipantIdentity: "x"}}})
	if r := <-res; r.GetParticipantIdentity() != "x" {
		t.Fatalf("answer %v", r)
	}
	// Not assigned yet: the server does not know the job.
	early := &livekit.UpdateJobStatus{JobId: j.GetId(), Status: livekit.JobStatus_JS_RUNNING}
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateJob{UpdateJob: early}})
	if err := conn.waitFor(ctx, func() bool { return len(conn.unknown) == 1 }); err != nil {
		t.Fatalf("the status of a job never assigned was not recorded as unknown: %v", err)
	}
	if err := conn.Assign(ctx, j, Token); err != nil {
		t.Fatal(err)
	}
	if m, err := c.read(); err != nil || m.GetAssignment().GetJob().GetId() != j.GetId() {
		t.Fatalf("assignment received: %v %v", m, err)
	}
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateJob{UpdateJob: &livekit.UpdateJobStatus{
		JobId: j.GetId(), Status: livekit.JobStatus_JS_SUCCESS}}})
	if _, err := conn.WaitJobStatus(ctx, j.GetId(), livekit.JobStatus_JS_SUCCESS); err != nil {
		t.Fatal(err)
	}
	if u := conn.UnknownStatuses(); len(u) != 1 || u[0].GetStatus() != livekit.JobStatus_JS_RUNNING {
		t.Fatalf("unknown statuses %v, want the RUNNING sent before the assignment", u)
	}
	if got := conn.JobStatuses(); len(got) != 1 {
		t.Fatalf("recorded statuses %v, want only the SUCCESS after the assignment", got)
	}
	// Ended: a later status is an unknown job's again.
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateJob{UpdateJob: &livekit.UpdateJobStatus{
		JobId: j.GetId(), Status: livekit.JobStatus_JS_FAILED}}})
	if _, err := srv.WaitJobStatus(ctx, j.GetId(), livekit.JobStatus_JS_SUCCESS); err != nil {
		t.Fatal(err)
	}
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateWorker{UpdateWorker: &livekit.UpdateWorkerStatus{Seq: 1}}})
	if _, err := conn.WaitWorkerStatus(ctx, func(u *livekit.UpdateWorkerStatus) bool { return u.GetSeq() == 1 }); err != nil {
		t.Fatal(err)
	}

	// A frame that is not a WorkerMessage ends the connection.
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-conn.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not closed after a text frame")
	}
	if _, err := conn.WaitJobStatus(ctx, "AJ_never", livekit.JobStatus_JS_SUCCESS); !errors.Is(err, ErrClosed) {
		t.Errorf("wait on a closed connection = %v, want ErrClosed", err)
	}
	if _, err := conn.Offer(ctx, NewJob("raw", "")); err == nil {
		t.Errorf("offer on a closed connection succeeded")
	}
}

func TestCloseEndsEverything(t *testing.T) {
	t.Parallel()
	srv := NewServer(nil)
	c, _, err := dialRaw(t, srv, agentToken(t, "k", "s", true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.register(""); err != nil {
		t.Fatal(err)
	}
	// A connection still in its handshake.
	pending, _, err := dialRaw(t, srv, agentToken(t, "k", "s", true))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := srv.WaitWorker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		_, err := srv.WaitWorker(ctx)
		waited <- err
	}()
	srv.Close()
	srv.Close()
	if err := <-waited; !errors.Is(err, ErrServerClosed) {
		t.Errorf("WaitWorker across Close = %v, want ErrServerClosed", err)
	}
	<-conn.Done()
	if _, err := c.read(); err == nil {
		t.Errorf("registered client still connected after Close")
	}
	if _, err := pending.read(); err == nil {
		t.Errorf("pending client still connected after Close")
	}
}

func TestNotAnUpgrade(t *testing.T) {
	t.Parallel()
	srv := NewServer(t)
	resp, err := http.Get(srv.HTTPURL() + "/agent")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("plain GET /agent: HTTP %d, want 404", resp.StatusCode)
	}
}

func TestUnknownMessageDecodes(t *testing.T) {
	m := &livekit.ServerMessage{}
	if err := proto.Unmarshal(UnknownMessage(), m); err != nil {
		t.Fatalf("UnknownMessage is not a valid ServerMessage: %v", err)
	}
	if m.GetMessage() != nil || len(m.ProtoReflect().GetUnknown()) == 0 {
		t.Fatalf("UnknownMessage decodes to %v, want only an unknown field", m)
	}
}
