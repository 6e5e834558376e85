package jobrt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

func newTestJob(t *testing.T) (*Job, *Control) {
	t.Helper()
	return New(context.Background(), Params{Info: &livekit.Job{Id: "AJ_" + t.Name(), Room: &livekit.Room{Name: "r"}}})
}

// waitDone fails the test if ctx is not done within a generous bound.
func waitDone(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the job's context is still running", what)
	}
}

func panicInGoroutine() { panic("goroutine boom") }

// A panic in a goroutine started with Go cancels the job's context with a
// *PanicError carrying the stack, and fails the job even though the
// handler returns nil.
func TestGoPanicFailsTheJob(t *testing.T) {
	t.Parallel()
	j, ctl := newTestJob(t)
	err := ctl.Run(func(ctx context.Context) error {
		j.Go(func(context.Context) error {
			panicInGoroutine()
			return nil
		})
		waitDone(t, ctx, "after the panic")
		return nil // the handler does not even report it
	})
	if err != nil {
		t.Fatalf("handler returned %v", err)
	}
	pe, ok := errors.AsType[*PanicError](context.Cause(ctl.Context()))
	if !ok {
		t.Fatalf("cause %v, want a *PanicError", context.Cause(ctl.Context()))
	}
	if pe.Value != "goroutine boom" || pe.Where != "job goroutine" || !strings.Contains(string(pe.Stack), "panicInGoroutine") {
		t.Fatalf("panic error: value %v, where %q, stack:\n%s", pe.Value, pe.Where, pe.Stack)
	}
	if got, want := pe.Error(), "job goroutine panicked: goroutine boom"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	outcome := ctl.Finish(context.Background(), err)
	if !errors.Is(outcome, pe) {
		t.Fatalf("outcome %v, want the panic", outcome)
	}
}

// A goroutine's error fails the job; the handler that returns the
// context's error reports it as the job's outcome.
func TestGoErrorFailsTheJob(t *testing.T) {
	t.Parallel()
	boom := errors.New("lost the database")
	j, ctl := newTestJob(t)
	err := ctl.Run(func(ctx context.Context) error {
		j.Go(func(context.Context) error { return boom })
		waitDone(t, ctx, "after the error")
		return ctx.Err()
	})
	cause := context.Cause(ctl.Context())
	if !errors.Is(cause, boom) || !strings.Contains(cause.Error(), "job goroutine failed") {
		t.Fatalf("cause %v, want the goroutine's error wrapped", cause)
	}
	if outcome := ctl.Finish(context.Background(), err); !errors.Is(outcome, boom) {
		t.Fatalf("outcome %v, want %v", outcome, boom)
	}
}

// Returning the context's error, once the job's context ended, is not a
// failure: it is how goroutines stop.
func TestGoContextErrorIsNoFailure(t *testing.T) {
	t.Parallel()
	j, ctl := newTestJob(t)
	returned := make(chan struct{})
	err := ctl.Run(func(ctx context.Context) error {
		j.Go(func(ctx context.Context) error {
			defer close(returned)
			<-ctx.Done()
			return fmt.Errorf("reader stopped: %w", ctx.Err())
		})
		j.Shutdown("done")
		return ctx.Err()
	})
	if outcome := ctl.Finish(context.Background(), err); outcome != nil {
		t.Fatalf("outcome %v, want success", outcome)
	}
	select {
	case <-returned:
	default:
		t.Fatal("Finish returned before the goroutine did")
	}
}

// The job's end waits for its goroutines: Finish cancels the context, then
// waits, then runs the shutdown hooks.
func TestFinishWaitsForGoroutines(t *testing.T) {
	t.Parallel()
	j, ctl := newTestJob(t)
	var finished atomic.Bool
	hookSaw := make(chan bool, 1)
	j.OnShutdown(func(context.Context, error) { hookSaw <- finished.Load() })
	err := ctl.Run(func(ctx context.Context) error {
		j.Go(func(ctx context.Context) error {
			<-ctx.Done()
			time.Sleep(200 * time.Millisecond) // cleaning up
			finished.Store(true)
			return nil
		})
		return nil // returning ends the job
	})
	if outcome := ctl.Finish(context.Background(), err); outcome != nil {
		t.Fatalf("outcome %v", outcome)
	}
	if !finished.Load() {
		t.Fatal("Finish returned before the goroutine finished")
	}
	if !<-hookSaw {
		t.Fatal("the shutdown hook ran before the goroutine finished")
	}
}

// A goroutine that ignores the job's end holds Finish only until Finish's
// context ends; Go after the end does not start anything.
func TestFinishWaitIsBounded(t *testing.T) {
	t.Parallel()
	j, ctl := newTestJob(t)
	release := make(chan struct{})
	exited := make(chan struct{})
	j.Go(func(context.Context) error {
		defer close(exited)
		<-release // ignores ctx
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	ctl.Finish(ctx, nil)
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("Finish took %s with a 200ms bound", took)
	}
	var ran atomic.Bool
	j.Go(func(context.Context) error { ran.Store(true); return nil })
	close(release)
	<-exited
	if ran.Load() {
		t.Fatal("Go after the job ended ran its function")
	}
}

// A failure after the job's context was cancelled keeps the first cause
// but still fails the job.
func TestGoFailureAfterTermination(t *testing.T) {
	t.Parallel()
	j, ctl := newTestJob(t)
	ctl.Cancel(ErrTerminated)
	j.Go(func(context.Context) error { panic("late") })
	err := ctl.Run(func(ctx context.Context) error { return ctx.Err() })
	outcome := ctl.Finish(context.Background(), err)
	if _, ok := errors.AsType[*PanicError](outcome); !ok {
		t.Fatalf("outcome %v, want the panic", outcome)
	}
	if !errors.Is(context.Cause(ctl.Context()), ErrTerminated) {
		t.Fatalf("cause %v, want ErrTerminated kept", context.Cause(ctl.Context()))
	}
}

// A panic in a room callback fails the job instead of the process; the
// user's callbacks and the job's own handling both run.
func TestCallbacksAreGuardedAndChained(t *testing.T) {
	t.Parallel()
	j, ctl := newTestJob(t)
	var connected, disconnected atomic.Int32
	user := lksdk.NewRoomCallback()
	user.OnParticipantConnected = func(*lksdk.RemoteParticipant) { connected.Add(1) }
	user.OnParticipantDisconnected = func(*lksdk.RemoteParticipant) { disconnected.Add(1) }
	user.OnDataPacket = func(lksdk.DataPacket, lksdk.DataReceiveParams) { panic("bad packet") }
	cb := j.wrapCallback(user)

	wake, stop := j.watchers.watch()
	defer stop()
	cb.OnParticipantConnected(nil)
	select {
	case <-wake:
	default:
		t.Fatal("a participant event did not wake the job's watchers")
	}
	cb.OnParticipantDisconnected(nil)
	if connected.Load() != 1 || disconnected.Load() != 1 {
		t.Fatalf("user callbacks ran %d and %d times, want 1 and 1", connected.Load(), disconnected.Load())
	}
	cb.OnDataPacket(nil, lksdk.DataReceiveParams{}) // must not panic
	pe, ok := errors.AsType[*PanicError](context.Cause(ctl.Context()))
	if !ok || pe.Where != "room callback OnDataPacket" || pe.Value != "bad packet" {
		t.Fatalf("cause %v, want the callback's panic", context.Cause(ctl.Context()))
	}

	// Connect with no callbacks: the job's own handling still runs.
	j2, ctl2 := newTestJob(t)
	cb2 := j2.wrapCallback(nil)
	cb2.OnDisconnectedWithReason(lksdk.RoomClosed)
	if !errors.Is(context.Cause(ctl2.Context()), ErrRoomDisconnected) {
		t.Fatalf("cause %v, want ErrRoomDisconnected", context.Cause(ctl2.Context()))
	}
}

// Waking never blocks and is never lost: a wake-up before the watcher
// reads is kept, many coalesce into one.
func TestWatchersNeverBlock(t *testing.T) {
	t.Parallel()
	var w watchers
	wake, stop := w.watch()
	for range 100 {
		w.wake()
	}
	select {
	case <-wake:
	default:
		t.Fatal("wake-up lost")
	}
	select {
	case <-wake:
		t.Fatal("wake-ups did not coalesce")
	default:
	}
	stop()
	w.wake() // no watcher left: nothing to do, nothing blocks
}

func TestWaitForParticipantBeforeConnect(t *testing.T) {
	t.Parallel()
	j, _ := newTestJob(t)
	_, err := j.WaitForParticipant(context.Background(), WithIdentity("caller"))
	if !errors.Is(err, ErrNotConnected) || !strings.Contains(err.Error(), `identity "caller"`) {
		t.Fatalf("err = %v, want ErrNotConnected naming the participant", err)
	}
}

func TestFilterString(t *testing.T) {
	for _, tc := range []struct {
		opts []ParticipantOption
		want string
	}{
		{nil, "participant that is not an agent"},
		{[]ParticipantOption{WithIdentity("bob")}, `participant of identity "bob"`},
		{[]ParticipantOption{WithKind(livekit.ParticipantInfo_SIP), WithKind(livekit.ParticipantInfo_STANDARD)},
			"participant of kind SIP or STANDARD"},
	} {
		if got := newFilter(tc.opts).String(); got != tc.want {
			t.Errorf("filter %q, want %q", got, tc.want)
		}
	}
}

// Neither printing Params nor asking for the API of a job without
// credentials shows a secret.
func TestSecretsStayHidden(t *testing.T) {
	t.Parallel()
	const token, secret = "tok-very-secret", "api-very-secret"
	p := Params{Info: &livekit.Job{Id: "AJ_s"}, URL: "ws://x", Token: token, APIKey: "key", APISecret: secret}
	j, _ := New(context.Background(), p)
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%+v", p), fmt.Sprintf("%#v", p), fmt.Sprintf("%+v", j)} {
		if strings.Contains(s, token) || strings.Contains(s, secret) {
			t.Errorf("printed with a secret: %s", s)
		}
	}

	j, _ = New(context.Background(), Params{Info: &livekit.Job{Id: "AJ_n"}, URL: "ws://x", APIKey: "key"})
	api, err := j.API()
	if api != nil || !errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "API secret") {
		t.Fatalf("API() = %v, %v; want ErrNoCredentials naming the API secret", api, err)
	}
	if err := j.DeleteRoom(context.Background()); !errors.Is(err, ErrNoCredentials) {
		t.Fatalf("DeleteRoom = %v, want ErrNoCredentials", err)
	}
}
