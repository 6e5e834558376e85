package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/sdklog"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/livekittest"
	"github.com/lkagent/lkagent/worker"
)

// srv is the one real server all tests of this package share; each test
// uses agent names and rooms of its own, so tests never see each other's
// jobs. Set once in TestMain, read-only afterwards.
var srv *lkserver.Server

// serverLog keeps the server's output, for assertions on what it saw.
var serverLog = &syncbuf.Buffer{}

func TestMain(m *testing.M) {
	// Before any test runs: the SDK's process-wide logger is set once.
	sdklog.Install(slog.New(slog.DiscardHandler))
	if lkserver.Short() {
		fmt.Println(lkserver.ShortSkipReason + " (every test of this package)")
		os.Exit(0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	s, err := lkserver.Start(ctx, lkserver.Options{Logs: serverLog})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: start LiveKit server:", err)
		os.Exit(1)
	}
	srv = s
	code := m.Run()
	_ = s.Stop()
	os.Exit(code)
}

// uniq returns prefix plus a random suffix: agent names and rooms of one
// test never collide with another's.
func uniq(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// testLogger writes the worker's logs to the test log until the test ends.
func testLogger(t testing.TB) *slog.Logger { return livekittest.Logger(t) }

// ran records one handler run.
type ran struct {
	Worker     string // deployment of the worker that ran it
	Deployment string // j.Deployment()
	Room       string
	JobID      string
	Identity   string
}

// startWorker runs a worker against srv until the test ends, and waits
// until it is registered.
func startWorker(t *testing.T, o worker.Options, h job.Handler) *worker.Worker {
	t.Helper()
	o.URL, o.APIKey, o.APISecret = srv.URL(), srv.APIKey(), srv.APISecret()
	return startWorkerAt(t, o, h)
}

// startWorkerAt starts a worker with o until the test ends (draining for
// o.DrainTimeout at the end), and returns once it is registered and the
// server routes to it.
func startWorkerAt(t *testing.T, o worker.Options, h job.Handler) *worker.Worker {
	t.Helper()
	testDefaults(t, &o)
	w, err := worker.New(o, h)
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatalf("worker did not register: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), o.DrainTimeout)
		defer cancel()
		_ = w.Stop(ctx) // jobs still holding at the end are cancelled
		if err := w.Err(); err != nil {
			t.Errorf("the worker stopped on its own: %v", err)
		}
	})
	lkserver.AwaitRouting()
	return w
}

// recorder is a handler that records runs and waits for ctx.
type recorder struct {
	deployment string
	hold       bool // wait for ctx instead of returning at once
	runs       chan ran
}

func newRecorder(deployment string, hold bool) *recorder {
	return &recorder{deployment: deployment, hold: hold, runs: make(chan ran, 100)}
}

func (r *recorder) handle(ctx context.Context, j *job.Job) error {
	r.runs <- ran{Worker: r.deployment, Deployment: j.Deployment(), Room: j.RoomName(), JobID: j.ID(), Identity: j.Identity()}
	if r.hold {
		<-ctx.Done()
	}
	return nil
}

func dispatchClient() *lksdk.AgentDispatchClient {
	return lksdk.NewAgentDispatchServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret())
}

func roomClient() *lksdk.RoomServiceClient {
	return lksdk.NewRoomServiceClient(srv.HTTPURL(), srv.APIKey(), srv.APISecret())
}

func createDispatch(t *testing.T, agentName, room, deployment string) *livekit.AgentDispatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d, err := dispatchClient().CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{
		AgentName: agentName, Room: room, Deployment: deployment,
	})
	if err != nil {
		t.Fatalf("CreateDispatch(agent=%q room=%q deployment=%q): %v", agentName, room, deployment, err)
	}
	return d
}

// waitRun waits for the next run recorded on any of chans.
func waitRun(t *testing.T, timeout time.Duration, chans ...chan ran) ran {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, c := range chans {
			select {
			case r := <-c:
				return r
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatalf("no job ran within %s", timeout)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// expectNoRun fails if any of chans records a run within d.
func expectNoRun(t *testing.T, d time.Duration, chans ...chan ran) {
	t.Helper()
	deadline := time.After(d)
	for {
		for _, c := range chans {
			select {
			case r := <-c:
				t.Fatalf("unexpected run: %+v", r)
			default:
			}
		}
		select {
		case <-deadline:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// testDefaults sets what every test worker needs: logs in the test log, and
// a short drain so that a test's end cancels jobs still holding.
func testDefaults(t *testing.T, o *worker.Options) {
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = time.Second
	}
}

// joinedJob returns the id of d's job once the server lists the job and
// its agent active in the room (its connection up); false until then.
func joinedJob(t *testing.T, d *livekit.AgentDispatch) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := dispatchClient().ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: d.GetRoom(), DispatchId: d.GetId()})
	if err != nil {
		return "", false
	}
	for _, x := range res.GetAgentDispatches() {
		for _, j := range x.GetState().GetJobs() {
			if id := j.GetState().GetParticipantIdentity(); id != "" && agentActive(t, srv, d.GetRoom(), id) {
				return j.GetId(), true
			}
		}
	}
	return "", false
}

// startCluster starts two server nodes that share a Redis (and their API
// key), stopped at the test's end.
func startCluster(t *testing.T) (nodeA, nodeB *lkserver.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	redis, err := lkserver.StartRedis(ctx)
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	t.Cleanup(func() { _ = redis.Stop() })
	nodeA = lkserver.StartTB(t, lkserver.Options{RedisAddr: redis.Addr()})
	nodeB = lkserver.StartTB(t, lkserver.Options{RedisAddr: redis.Addr(), APIKey: nodeA.APIKey(), APISecret: nodeA.APISecret()})
	return nodeA, nodeB
}
