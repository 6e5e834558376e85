package guard_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/guard"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

var (
	// shared is the one server of the package's tests; it posts its
	// webhooks to hooks, which hands each to the receiver a test
	// registered for the event's room.
	shared lkserver.Shared
	hooks  = &router{byRoom: map[string]http.Handler{}}
)

// envChild, when set ("agent-name,deployment"), makes the test binary run
// a worker instead of the tests: a process a test can SIGKILL.
const envChild = "LKAGENT_GUARD_TEST_WORKER"

func TestMain(m *testing.M) {
	lksdk.SetLogger(lklogger.GetDiscardLogger())
	if spec := os.Getenv(envChild); spec != "" {
		os.Exit(runChildWorker(spec))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	hs := &http.Server{Handler: hooks, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	shared.Options = lkserver.Options{WebhookURLs: []string{"http://" + ln.Addr().String() + guard.WebhookPath}}
	code := shared.Run(m)
	_ = hs.Close()
	os.Exit(code)
}

// runChildWorker runs a worker of the test agent until the process is
// killed, printing "registered" and "job <room> <identity> <job id>".
func runChildWorker(spec string) int {
	agent, deployment, _ := strings.Cut(spec, ",")
	var mu sync.Mutex
	say := func(s string) { mu.Lock(); defer mu.Unlock(); fmt.Println(s) }
	w, err := worker.New(worker.Options{
		AgentName: agent, Deployment: deployment,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		OnStateChange: func(c worker.StateChange) {
			if c.State == worker.StateRegistered {
				say("registered")
			}
		},
	}, func(ctx context.Context, j *job.Job) error {
		if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
			return err
		}
		say(fmt.Sprintf("job %s %s %s", j.RoomName(), j.Identity(), j.ID()))
		<-ctx.Done()
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := w.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// router hands each webhook to the handler registered for its room, and
// drops (200) the others.
type router struct {
	mu     sync.Mutex
	byRoom map[string]http.Handler
}

func (rt *router) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	var peek struct {
		Room struct {
			Name string `json:"name"`
		} `json:"room"`
	}
	_ = json.Unmarshal(body, &peek)
	rt.mu.Lock()
	h := rt.byRoom[peek.Room.Name]
	rt.mu.Unlock()
	if h == nil {
		return
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	h.ServeHTTP(rw, req)
}

// route sends the webhooks of room to h until the test ends.
func route(t *testing.T, room string, h http.Handler) {
	hooks.mu.Lock()
	hooks.byRoom[room] = h
	hooks.mu.Unlock()
	t.Cleanup(func() {
		hooks.mu.Lock()
		delete(hooks.byRoom, room)
		hooks.mu.Unlock()
	})
}

// uniq returns prefix plus a random suffix.
func uniq(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// testGuard is a Restarter with its webhook receiver, its own registry and
// a log kept for assertions.
type testGuard struct {
	r   *guard.Restarter
	wh  *guard.Webhook
	reg *prometheus.Registry
	log *syncbuf.Buffer
}

// newGuard returns a guard for srv with o's limits, closed (in-flight
// restarts waited for) at the end of the test; its log is shown if the
// test fails.
func newGuard(t *testing.T, srv *lkserver.Server, o guard.Options) *testGuard {
	t.Helper()
	g := &testGuard{reg: prometheus.NewRegistry(), log: &syncbuf.Buffer{}}
	o.URL, o.APIKey, o.APISecret = srv.URL(), srv.APIKey(), srv.APISecret()
	o.Logger = slog.New(slog.NewTextHandler(g.log, nil))
	o.Registerer = g.reg
	r, err := guard.New(o)
	if err != nil {
		t.Fatal(err)
	}
	g.r, g.wh = r, guard.NewWebhook(r, guard.WebhookOptions{})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := g.wh.Close(ctx); err != nil {
			t.Errorf("close the webhook receiver: %v", err)
		}
		if t.Failed() {
			t.Logf("guard log:\n%s", g.log)
		}
	})
	return g
}

// metric returns the value of the counter name with labels, 0 if absent.
func (g *testGuard) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.Metric {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.Label {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// line returns the guard's log line with every one of parts, failing the
// test if there is none. Tests wait on the guard's counters; its log lines
// are checked once they have long been written.
func (g *testGuard) line(t *testing.T, parts ...string) string {
	t.Helper()
	line, ok := g.log.Line(parts...)
	if !ok {
		t.Fatalf("no guard log line with %q in:\n%s", parts, g.log)
	}
	return line
}

// lk is the shared server with its API clients.
type lk struct {
	srv      *lkserver.Server
	rooms    *lksdk.RoomServiceClient
	dispatch *lksdk.AgentDispatchClient
}

func server(t *testing.T) *lk {
	t.Helper()
	srv := shared.Server(t)
	return &lk{srv: srv,
		rooms:    lksdk.NewRoomServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret()),
		dispatch: lksdk.NewAgentDispatchServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret()),
	}
}

// join puts a caller into room until the test ends (or it leaves).
func (s *lk) join(t *testing.T, room string) *lksdk.Room {
	t.Helper()
	r, err := lksdk.ConnectToRoom(s.srv.URL(), lksdk.ConnectInfo{APIKey: s.srv.APIKey(), APISecret: s.srv.APISecret(),
		RoomName: room, ParticipantIdentity: "caller"}, lksdk.NewRoomCallback())
	if err != nil {
		t.Fatalf("caller joins %s: %v", room, err)
	}
	t.Cleanup(r.Disconnect)
	return r
}

func (s *lk) createDispatch(t *testing.T, req *livekit.CreateAgentDispatchRequest) *livekit.AgentDispatch {
	t.Helper()
	d, err := s.dispatch.CreateDispatch(context.Background(), req)
	if err != nil {
		t.Fatalf("create dispatch: %v", err)
	}
	return d
}

func (s *lk) dispatches(t *testing.T, room string) []*livekit.AgentDispatch {
	t.Helper()
	res, err := s.dispatch.ListDispatch(context.Background(), &livekit.ListAgentDispatchRequest{Room: room})
	if err != nil {
		t.Fatalf("list dispatches of %s: %v", room, err)
	}
	return res.AgentDispatches
}

// agents returns the identities of the agents in room.
func (s *lk) agents(t *testing.T, room string) []string {
	t.Helper()
	res, err := s.rooms.ListParticipants(context.Background(), &livekit.ListParticipantsRequest{Room: room})
	if err != nil {
		t.Fatalf("list participants of %s: %v", room, err)
	}
	var ids []string
	for _, p := range res.Participants {
		if p.Kind == livekit.ParticipantInfo_AGENT {
			ids = append(ids, p.Identity)
		}
	}
	return ids
}

// run is one job an in-process agent ran.
type run struct {
	room, identity, jobID string
	restarts              string    // the lkagent.restarts attribute of its dispatch
	at                    time.Time // when it joined the room
}

// behavior is what an in-process agent does once in its room.
type behavior func(ctx context.Context, j *job.Job, room *lksdk.Room) error

// agent is an in-process worker recording the jobs it ran.
type agent struct {
	name string
	mu   sync.Mutex
	runs []run
}

// startAgent runs a worker of a new agent name in deployment dep until the
// test ends; each job joins its room, is recorded, then does b.
func startAgent(t *testing.T, s *lk, dep string, b behavior) *agent {
	t.Helper()
	a := &agent{name: uniq("bot")}
	registered := make(chan struct{}, 1)
	w, err := worker.New(worker.Options{
		URL: s.srv.URL(), APIKey: s.srv.APIKey(), APISecret: s.srv.APISecret(),
		AgentName: a.name, Deployment: dep,
		DrainTimeout: time.Second, // jobs that stay would otherwise hold the stop until their room closes
		Logger:       slog.New(slog.DiscardHandler),
		OnStateChange: func(c worker.StateChange) {
			if c.State == worker.StateRegistered {
				select {
				case registered <- struct{}{}:
				default:
				}
			}
		},
	}, func(ctx context.Context, j *job.Job) error {
		room, err := j.Connect(ctx, lksdk.NewRoomCallback())
		if err != nil {
			return err
		}
		a.mu.Lock()
		a.runs = append(a.runs, run{room: j.RoomName(), identity: j.Identity(), jobID: j.ID(),
			restarts: j.Info().GetAttributes()[guard.AttrRestarts], at: time.Now()})
		a.mu.Unlock()
		return b(ctx, j, room)
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the test worker did not stop")
		}
	})
	select {
	case <-registered:
	case err := <-done:
		t.Fatalf("worker stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the test worker did not register")
	}
	lkserver.AwaitRouting()
	return a
}

// jobs returns the runs so far in room.
func (a *agent) jobs(room string) []run {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []run
	for _, r := range a.runs {
		if r.room == room {
			out = append(out, r)
		}
	}
	return out
}

// Behaviors.
var (
	// stay serves until the job ends.
	stay behavior = func(ctx context.Context, _ *job.Job, _ *lksdk.Room) error {
		<-ctx.Done()
		return nil
	}
	// die leaves the room saying it failed, as a crashing agent would.
	die behavior = func(_ context.Context, _ *job.Job, room *lksdk.Room) error { return agentError(room) }
	// dieOnce dies in its first run and stays in restarted ones.
	dieOnce behavior = func(ctx context.Context, j *job.Job, room *lksdk.Room) error {
		if j.Info().GetAttributes()[guard.AttrRestarts] == "" {
			return agentError(room)
		}
		return stay(ctx, j, room)
	}
	// leave ends the job normally after a moment.
	leave behavior = func(ctx context.Context, _ *job.Job, _ *lksdk.Room) error {
		select {
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil
	}
	// dieWhenAlone dies once no caller is left in the room.
	dieWhenAlone behavior = func(ctx context.Context, j *job.Job, room *lksdk.Room) error {
		for {
			alone := true
			for _, p := range room.GetRemoteParticipants() {
				if p.Kind() != lksdk.ParticipantAgent {
					alone = false
				}
			}
			if alone {
				return agentError(room)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
)

// agentError leaves the room with AGENT_ERROR, as an agent whose code
// failed does, and returns the error the job fails with.
func agentError(room *lksdk.Room) error {
	room.DisconnectWithReason(livekit.DisconnectReason_AGENT_ERROR)
	return fmt.Errorf("agent failed on purpose")
}

// child is a worker process of the test binary.
type child struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
}

// startChild starts a worker process of agent in deployment dep, killed at
// the end of the test if still running.
func startChild(t *testing.T, s *lk, agentName, dep string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	c.cmd.Env = append(os.Environ(), envChild+"="+agentName+","+dep,
		"LIVEKIT_URL="+s.srv.URL(), "LIVEKIT_API_KEY="+s.srv.APIKey(), "LIVEKIT_API_SECRET="+s.srv.APISecret())
	var stderr syncbuf.Buffer
	c.cmd.Stderr = &stderr
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
		if t.Failed() {
			t.Logf("worker process %d stderr:\n%s", c.cmd.Process.Pid, &stderr)
		}
	})
	return c
}

// line returns the first output line starting with prefix.
func (c *child) line(prefix string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.HasPrefix(l, prefix) {
			return l, true
		}
	}
	return "", false
}

// concurrently runs n subtests of t at once, named and made by sub. They
// wait on the server, not on the CPU: unlike t.Parallel subtests, they are
// not held back to GOMAXPROCS at a time.
func concurrently(t *testing.T, n int, sub func(i int) (string, func(t *testing.T))) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		name, fn := sub(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(name, fn)
		}()
	}
	wg.Wait()
}
