package livekittest_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/livekittest"
	"github.com/lkagent/lkagent/worker"
)

var shared livekittest.Shared

func TestMain(m *testing.M) {
	// The rooms the in-test agents join log through the SDK's global
	// logger; the tests check results, not WebRTC state changes.
	lksdk.SetLogger(lklogger.GetDiscardLogger())
	// The workers of the examples log to slog's default logger.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	os.Exit(shared.Run(m))
}

// reply is what the in-test agent answers to text.
func reply(deployment, text string) string {
	if deployment == "" {
		deployment = "production"
	}
	return fmt.Sprintf("echo[%s]: %s", deployment, text)
}

// echo is a tiny agent: it joins the job's room and answers chat
// messages, text streams on lk.chat and data packets with reply(), in the
// same form and on the same topic. Every job's room name is sent to jobs.
func echo(jobs chan<- string) job.Handler {
	return func(ctx context.Context, j *job.Job) error {
		type msg struct {
			from, text, topic string
			chat              bool
		}
		in := make(chan msg, 16)
		cb := lksdk.NewRoomCallback()
		cb.OnDataPacket = func(p lksdk.DataPacket, params lksdk.DataReceiveParams) {
			switch p := p.(type) {
			case *lksdk.UserDataPacket:
				in <- msg{from: params.SenderIdentity, text: string(p.Payload), topic: p.Topic}
			case *livekit.ChatMessage:
				in <- msg{from: params.SenderIdentity, text: p.GetMessage(), chat: true}
			}
		}
		room, err := j.Connect(ctx, cb)
		if err != nil {
			return err
		}
		if err := room.RegisterTextStreamHandler(livekittest.ChatTopic, func(r *lksdk.TextStreamReader, from string) {
			in <- msg{from: from, text: r.ReadAll(), topic: livekittest.ChatTopic, chat: true}
		}); err != nil {
			return err
		}
		if jobs != nil {
			jobs <- j.RoomName()
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case m := <-in:
				text := reply(j.Deployment(), m.text)
				to := lksdk.WithDataPublishDestination([]string{m.from})
				switch {
				case m.topic == livekittest.ChatTopic:
					room.LocalParticipant.SendText(text, lksdk.StreamTextOptions{Topic: livekittest.ChatTopic, DestinationIdentities: []string{m.from}})
				case m.chat:
					err = room.LocalParticipant.PublishDataPacket(lksdk.ChatMessage(time.Now(), text), lksdk.WithDataPublishReliable(true), to)
				default:
					pkt := lksdk.UserData([]byte(text))
					pkt.Topic = m.topic
					err = room.LocalParticipant.PublishDataPacket(pkt, lksdk.WithDataPublishReliable(true), to)
				}
				if err != nil {
					j.Logger().Warn("reply failed", "error", err)
				}
			}
		}
	}
}

// runWorker runs a worker of agent and deployment with handler h against
// srv until the test ends.
func runWorker(t *testing.T, srv *livekittest.Server, agent, deployment string, h job.Handler) {
	t.Helper()
	w, err := worker.New(worker.Options{
		URL: srv.URL, APIKey: srv.APIKey, APISecret: srv.APISecret,
		AgentName: agent, Deployment: deployment,
		DrainTimeout: time.Second, // then running jobs are cancelled
		Logger:       slog.New(slog.DiscardHandler),
	}, h)
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("worker %s/%q: Run: %v", agent, deployment, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("worker %s/%q still running 30s after its context ended", agent, deployment)
		}
	})
}

// dispatchesOf returns the dispatches of agent to room: the server adds
// a dispatch of the automatic agent ("") to every room it creates.
func dispatchesOf(t *testing.T, srv *livekittest.Server, room, agent string) []*livekit.AgentDispatch {
	t.Helper()
	var out []*livekit.AgentDispatch
	for _, d := range srv.ListDispatches(t, room) {
		if d.GetAgentName() == agent {
			out = append(out, d)
		}
	}
	return out
}

// A dispatch created right after the worker was started, before it could
// register, reaches it; the agent is then seen by the room service and by
// a caller.
func TestDispatchRightAfterWorkerStarts(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	agent, room := livekittest.UniqueName("agent"), livekittest.UniqueName("room")
	runWorker(t, srv, agent, "staging", echo(nil))

	start := time.Now()
	d := srv.Dispatch(t, room, agent, "staging", "meta")
	t.Logf("dispatch taken after %s", time.Since(start).Round(time.Millisecond))
	if d.GetId() == "" || d.GetAgentName() != agent || d.GetDeployment() != "staging" || d.GetMetadata() != "meta" {
		t.Fatalf("dispatch = %v, want an id, agent %s, deployment staging, metadata meta", d, agent)
	}

	p := srv.WaitForAgent(t, room, agent)
	if p.GetKind() != livekit.ParticipantInfo_AGENT || p.GetAttributes()[livekittest.AgentNameAttribute] != agent {
		t.Fatalf("agent participant = %v", p)
	}
	t.Logf("agent connected after %s", time.Since(start).Round(time.Millisecond))

	caller := srv.Join(t, room, "")
	rp := caller.WaitForAgent(t, agent)
	if rp.Identity() != p.GetIdentity() {
		t.Fatalf("caller saw agent %q, room service %q", rp.Identity(), p.GetIdentity())
	}
	t.Logf("caller saw the agent after %s", time.Since(start).Round(time.Millisecond))

	if ds := dispatchesOf(t, srv, room, agent); len(ds) != 1 || ds[0].GetId() != d.GetId() {
		t.Fatalf("dispatches of %s in %s = %v, want only %s (a dropped attempt must be deleted)", agent, room, ds, d.GetId())
	}
	var agents int
	for _, p := range srv.Participants(t, room) {
		if p.GetKind() == livekit.ParticipantInfo_AGENT {
			agents++
		}
	}
	if agents != 1 {
		t.Fatalf("%d agents in the room, want 1", agents)
	}
}

// A staging worker that starts when a production worker of the same agent
// is long registered gets its dispatch too: the server drops the first
// dispatches (it knows the agent name, but has no staging worker yet) and
// Dispatch creates it again.
func TestDispatchRetriesUntilDeploymentRegisters(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	agent := livekittest.UniqueName("agent")
	runWorker(t, srv, agent, "", echo(nil))
	srv.Dispatch(t, livekittest.UniqueName("prod-room"), agent, "", "")

	room := livekittest.UniqueName("room")
	stagingJobs := make(chan string, 4)
	runWorker(t, srv, agent, "staging", echo(stagingJobs))
	d := srv.Dispatch(t, room, agent, "staging", "")
	select {
	case got := <-stagingJobs:
		if got != room {
			t.Fatalf("staging worker ran a job in %s, want %s", got, room)
		}
	case <-time.After(livekittest.Timeout):
		t.Fatal("staging worker ran no job")
	}
	if ds := dispatchesOf(t, srv, room, agent); len(ds) != 1 || ds[0].GetId() != d.GetId() {
		t.Fatalf("dispatches of %s in %s = %v, want only %s", agent, room, ds, d.GetId())
	}
}

// Chat messages, text streams on lk.chat and data packets go to the agent
// and its replies come back.
func TestChatAndDataRoundTrip(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	agent, room := livekittest.UniqueName("agent"), livekittest.UniqueName("room")
	runWorker(t, srv, agent, "", echo(nil))
	srv.Dispatch(t, room, agent, "", "")
	caller := srv.Join(t, room, "caller")
	caller.WaitForAgent(t, agent)

	if got, want := caller.Chat(t, "hello", nil), reply("", "hello"); got != want {
		t.Fatalf("Chat reply = %q, want %q", got, want)
	}

	caller.SendData(t, "game", []byte("move e4"))
	if got, want := string(caller.WaitData(t, "game")), reply("", "move e4"); got != want {
		t.Fatalf("data reply = %q, want %q", got, want)
	}

	caller.SendText(t, livekittest.ChatTopic, "over a stream")
	want := reply("", "over a stream")
	if got := caller.WaitChat(t, func(s string) bool { return strings.HasSuffix(s, "stream") }); got != want {
		t.Fatalf("text stream reply = %q, want %q", got, want)
	}

	// Replies wait in the inbox until taken, in order, whatever the wait.
	caller.SendChat(t, "one")
	caller.SendChat(t, "two")
	if got := caller.WaitChat(t, func(s string) bool { return strings.HasSuffix(s, "two") }); got != reply("", "two") {
		t.Fatalf("WaitChat(two) = %q", got)
	}
	if got := caller.WaitChat(t, nil); got != reply("", "one") {
		t.Fatalf("WaitChat(any) = %q, want the reply to one", got)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if got, err := caller.WaitChatContext(ctx, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitChatContext with nothing left = %q, %v; want a deadline error", got, err)
	}

	// A caller that left fails its waits at once.
	caller.Leave()
	if got, err := caller.WaitDataContext(t.Context(), "game"); err == nil || !strings.Contains(err.Error(), "left the room") {
		t.Fatalf("WaitDataContext after Leave = %q, %v; want an error saying the caller left", got, err)
	}
}

// A caller's token can dispatch the agent when the caller creates the
// room.
func TestTokenDispatch(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	agent := livekittest.UniqueName("agent")
	runWorker(t, srv, agent, "staging", echo(nil))
	// A token dispatch is not retried: make sure the worker takes jobs.
	srv.Dispatch(t, livekittest.UniqueName("warm-up"), agent, "staging", "")

	room := livekittest.UniqueName("room")
	token, err := srv.Token(room, "caller").
		SetAgents(&livekit.RoomAgentDispatch{AgentName: agent, Deployment: "staging"}).ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	caller := srv.JoinWithToken(t, token)
	if caller.Identity != "caller" || caller.Room.Name() != room {
		t.Fatalf("joined %q as %q, want %q as caller", caller.Room.Name(), caller.Identity, room)
	}
	srv.WaitForAgent(t, room, agent)
	caller.WaitForAgent(t, agent)
	if got, want := caller.Chat(t, "hi", nil), reply("staging", "hi"); got != want {
		t.Fatalf("reply %q, want %q", got, want)
	}
}

// Staging and production workers of one agent name run side by side; each
// dispatch runs on the worker of its deployment only.
func TestStagingAndProductionRouted(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	agent := livekittest.UniqueName("agent")
	stagingJobs, prodJobs := make(chan string, 8), make(chan string, 8)
	runWorker(t, srv, agent, "staging", echo(stagingJobs))
	runWorker(t, srv, agent, "", echo(prodJobs))

	stagingRoom, prodRoom := livekittest.UniqueName("staging-room"), livekittest.UniqueName("prod-room")
	var wg sync.WaitGroup
	for room, deployment := range map[string]string{stagingRoom: "staging", prodRoom: ""} {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), livekittest.Timeout)
			defer cancel()
			if _, err := srv.DispatchContext(ctx, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agent, Deployment: deployment}); err != nil {
				t.Errorf("DispatchContext: %v", err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, c := range []struct {
		jobs chan string
		room string
	}{{stagingJobs, stagingRoom}, {prodJobs, prodRoom}} {
		select {
		case got := <-c.jobs:
			if got != c.room {
				t.Fatalf("worker ran a job in %s, want %s", got, c.room)
			}
		case <-time.After(livekittest.Timeout):
			t.Fatalf("no job in %s", c.room)
		}
	}

	staging, prod := srv.Join(t, stagingRoom, ""), srv.Join(t, prodRoom, "")
	staging.WaitForAgent(t, agent)
	prod.WaitForAgent(t, agent)
	if got, want := staging.Chat(t, "hi", nil), reply("staging", "hi"); got != want {
		t.Errorf("staging room: reply %q, want %q", got, want)
	}
	if got, want := prod.Chat(t, "hi", nil), reply("", "hi"); got != want {
		t.Errorf("production room: reply %q, want %q", got, want)
	}
	select {
	case room := <-stagingJobs:
		t.Errorf("staging worker ran another job, in %s", room)
	case room := <-prodJobs:
		t.Errorf("production worker ran another job, in %s", room)
	default:
	}
}

// A dispatch no worker can take fails with the server's reasons and
// leaves no dispatch behind.
func TestDispatchNobodyTakes(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	agent := livekittest.UniqueName("agent")
	runWorker(t, srv, agent, "staging", echo(nil))

	for _, c := range []struct {
		name, agent, deployment, want string
		timeout                       time.Duration
	}{
		// The agent has a worker, but not in this deployment: the server
		// finds nobody for the job and says so at once.
		{"other deployment", agent, "canary", "failed to send job request", 15 * time.Second},
		// No worker of the agent ever registers.
		{"unknown agent", livekittest.UniqueName("nobody"), "", "logged no registration", 15 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			room := livekittest.UniqueName("room")
			ctx, cancel := context.WithTimeout(t.Context(), c.timeout)
			defer cancel()
			d, err := srv.DispatchContext(ctx, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: c.agent, Deployment: c.deployment})
			if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("DispatchContext = %v, %v; want a deadline error mentioning %q", d, err, c.want)
			}
			t.Logf("error: %v", err)
			if ds := dispatchesOf(t, srv, room, c.agent); len(ds) != 0 {
				t.Fatalf("dispatches left in %s: %v", room, ds)
			}
		})
	}
}

// A dispatch the server rejects fails at once, with the server's error.
func TestDispatchInvalidDeployment(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	agent := livekittest.UniqueName("agent")
	runWorker(t, srv, agent, "", echo(nil))
	start := time.Now()
	_, err := srv.DispatchContext(t.Context(), &livekit.CreateAgentDispatchRequest{
		Room: livekittest.UniqueName("room"), AgentName: agent, Deployment: "prod_us",
	})
	if err == nil || !strings.Contains(err.Error(), "create dispatch") || !strings.Contains(err.Error(), "deployment") {
		t.Fatalf("DispatchContext with deployment prod_us: %v; want the server's rejection", err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("the rejection took %s", took)
	}
	t.Logf("error: %v", err)
}

// Options.LogLevel filters what the user sees; dispatching, which reads
// the server's info lines, still works.
func TestLogLevelWarn(t *testing.T) {
	t.Parallel()
	var logs syncbuf.Buffer
	srv := livekittest.StartWithOptions(t, livekittest.Options{LogLevel: "warn", Logs: &logs})
	agent, room := livekittest.UniqueName("agent"), livekittest.UniqueName("room")
	runWorker(t, srv, agent, "", echo(nil))
	srv.Dispatch(t, room, agent, "", "")
	srv.WaitForAgent(t, room, agent)
	for _, line := range strings.Split(logs.String()+srv.RecentLogs(), "\n") {
		if strings.Contains(line, "\tINFO\t") || strings.Contains(line, "\tDEBUG\t") {
			t.Fatalf("line below warn passed on: %s", line)
		}
	}
}

func TestStartRejectsUnknownLogLevel(t *testing.T) {
	var sh livekittest.Shared
	sh.Options.LogLevel = "verbose"
	ft := &fatalRecorder{TB: t}
	func() {
		defer func() { _ = recover() }()
		sh.Server(ft)
	}()
	if !strings.Contains(ft.msg, `"verbose"`) {
		t.Fatalf("Shared.Server with LogLevel verbose: fatal %q, want it to name the level", ft.msg)
	}
	if err := sh.Close(); err != nil {
		t.Fatal(err)
	}
}

// fatalRecorder records Fatalf instead of ending the test, and panics to
// stop the caller as FailNow would.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(f)
}

func (f *fatalRecorder) Helper() {}

// Eventually returns once the condition holds, and fails the test naming
// what it waited for when it does not hold in time.
func TestEventually(t *testing.T) {
	var n atomic.Int32
	livekittest.Eventually(t, 10*time.Second, "the third check", func() bool { return n.Add(1) == 3 })
	if n.Load() != 3 {
		t.Fatalf("checked %d times, want 3", n.Load())
	}

	ft := &fatalRecorder{TB: t}
	start := time.Now()
	func() {
		defer func() { _ = recover() }()
		livekittest.Eventually(ft, 50*time.Millisecond, "a state that never comes", func() bool { return false })
	}()
	if !strings.Contains(ft.msg, "a state that never comes") || !strings.Contains(ft.msg, "50ms") {
		t.Fatalf("failure message %q, want it to name what and how long", ft.msg)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("gave up after %s, before 50ms", d)
	}
}

func TestUniqueName(t *testing.T) {
	a, b := livekittest.UniqueName("room"), livekittest.UniqueName("room")
	if a == b || !strings.HasPrefix(a, "room-") || len(a) != len("room-")+12 {
		t.Fatalf("UniqueName: %q and %q", a, b)
	}
}

// Logger writes to the test's log while the test runs, and drops what
// comes after its end, from any goroutine, without a race.
func TestLoggerEndsWithItsTest(t *testing.T) {
	var rec *recordingTB
	var log *slog.Logger
	t.Run("sub", func(t *testing.T) {
		rec = &recordingTB{TB: t}
		log = livekittest.Logger(rec)
		log.Info("during the test")
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		log.Info("after the test, from another goroutine")
	}()
	<-done
	log.Debug("after the test")
	if got := rec.lines(); len(got) != 1 || !strings.Contains(got[0], `msg="during the test"`) {
		t.Errorf("the test's log got %q, want only the line logged during the test", got)
	}
}

// recordingTB records what is logged to it, and is otherwise its TB.
type recordingTB struct {
	testing.TB
	mu  sync.Mutex
	got []string
}

func (r *recordingTB) Log(args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, fmt.Sprint(args...))
}

func (r *recordingTB) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// Metric sums the series of a name that carry the labels asked for.
func TestMetric(t *testing.T) {
	h := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, `# TYPE lkagent_offers_declined_total counter
lkagent_offers_declined_total{agent_name="a",deployment="canary",reason="full"} 2
lkagent_offers_declined_total{agent_name="a",deployment="canary",reason="rejected_by_handler"} 3
lkagent_offers_declined_total{agent_name="a",deployment="staging",reason="rejected_by_handler"} 4
# TYPE lkagent_jobs_running gauge
lkagent_jobs_running{agent_name="a",deployment="canary"} 5
`)
	}))
	defer h.Close()
	addr := strings.TrimPrefix(h.URL, "http://")
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"lkagent_offers_declined_total", nil, 9},
		{"lkagent_offers_declined_total", map[string]string{"reason": "rejected_by_handler"}, 7},
		{"lkagent_offers_declined_total", map[string]string{"reason": "rejected_by_handler", "deployment": "canary"}, 3},
		{"lkagent_offers_declined_total", map[string]string{"reason": "draining"}, 0},
		{"lkagent_jobs_running", nil, 5},
		{"lkagent_missing", nil, 0},
	} {
		if got := livekittest.Metric(t, addr, tc.name, tc.labels); got != tc.want {
			t.Errorf("Metric(%s, %v) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}
