package jobrt

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
)

func TestOutcome(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name  string
		cause error // nil: context not cancelled
		err   error
		want  error // nil: success; otherwise errors.Is target
	}{
		{"returned nil", nil, nil, nil},
		{"returned error", nil, boom, boom},
		{"terminated, returned ctx.Err", ErrTerminated, context.Canceled, nil},
		{"terminated, returned cause", ErrTerminated, ErrTerminated, nil},
		{"terminated, returned own error", ErrTerminated, boom, boom},
		{"shut down, returned ctx.Err", &ShutdownError{Reason: "done"}, context.Canceled, nil},
		{"room disconnected", ErrRoomDisconnected, context.Canceled, nil},
		{"drain timeout", ErrDrainTimeout, context.Canceled, ErrDrainTimeout},
		{"worker stopped", ErrWorkerStopped, context.Canceled, ErrWorkerStopped},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			if tc.cause != nil {
				cancel(tc.cause)
			}
			got := Outcome(ctx, tc.err)
			if tc.want == nil {
				if got != nil {
					t.Fatalf("Outcome = %v, want success", got)
				}
				return
			}
			if !errors.Is(got, tc.want) {
				t.Fatalf("Outcome = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRunRecoversPanic(t *testing.T) {
	_, ctl := New(context.Background(), Params{Info: &livekit.Job{Id: "AJ_p"}})
	err := ctl.Run(func(context.Context) error { panic("kaboom") })
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Value != "kaboom" || !strings.Contains(string(pe.Stack), "TestRunRecoversPanic") {
		t.Fatalf("Run = %v, want a PanicError with the value and the stack", err)
	}
	if got := ctl.Finish(context.Background(), err); got == nil || !strings.Contains(got.Error(), "kaboom") {
		t.Fatalf("Finish = %v, want the panic reported as failure", got)
	}
}

func TestFinishRunsHooksOnceInOrderAndSurvivesPanics(t *testing.T) {
	j, ctl := New(context.Background(), Params{Info: &livekit.Job{Id: "AJ_h"}})
	var order []int
	j.OnShutdown(func(context.Context, error) { order = append(order, 1) })
	j.OnShutdown(func(context.Context, error) { panic("hook panic") })
	j.OnShutdown(func(context.Context, error) { order = append(order, 3) })
	ctl.Finish(context.Background(), nil)
	ctl.Finish(context.Background(), nil)
	if len(order) != 2 || order[0] != 1 || order[1] != 3 {
		t.Fatalf("hooks ran as %v, want [1 3] once", order)
	}
	if ctl.Context().Err() == nil {
		t.Fatal("Finish left the job's context running")
	}
	if _, err := j.Connect(context.Background(), nil); err == nil {
		t.Fatal("Connect after the job ended succeeded")
	}
}

func TestConnectWithoutTokenFailsClearly(t *testing.T) {
	j, _ := New(context.Background(), Params{Info: &livekit.Job{Id: "AJ_c"}})
	_, err := j.Connect(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "URL and a token") {
		t.Fatalf("Connect = %v", err)
	}
}

func TestRequestDecidesOnce(t *testing.T) {
	r := NewRequest(&livekit.Job{Id: "AJ_r"}, true)
	if err := r.Accept(AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Reject(); !errors.Is(err, ErrDecided) {
		t.Fatalf("Reject after Accept = %v, want ErrDecided", err)
	}
	_, accepted, o := r.Decision()
	if !accepted || o.Identity != "agent-AJ_r" || !r.Resuming() {
		t.Fatalf("decision = %v %+v", accepted, o)
	}
}

func TestTimingProto(t *testing.T) {
	base := time.Now()
	tm := Timing{OfferReceived: base.Add(time.Millisecond), Connected: base.Add(3 * time.Millisecond)}
	p := tm.Proto(base)
	if p.OfferReceivedUs != 1000 || p.ConnectedUs != 3000 || p.AcceptedUs != 0 {
		t.Fatalf("Proto = %+v", p)
	}
}

// Connect never holds the job's lock while it joins (which waits for the
// server, and for ICE): Room, Shutdown and OnShutdown answer meanwhile.
func TestConnectDoesNotBlockTheJob(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() { // a server that accepts and never answers
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	j, ctl := New(context.Background(), Params{
		Info: &livekit.Job{Id: "AJ_slow", Room: &livekit.Room{Name: "r"}},
		URL:  "ws://" + ln.Addr().String(), Token: "token",
	})
	ctx, cancel := context.WithCancel(ctl.Context())
	joined := make(chan error, 1)
	go func() {
		_, err := j.Connect(ctx, nil)
		joined <- err
	}()
	select {
	case <-accepted: // Connect is waiting for the server now
	case err := <-joined:
		t.Fatalf("Connect returned before the server answered: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Connect did not reach the server within 30s")
	}
	answered := make(chan struct{})
	go func() {
		_ = j.Room()
		j.OnShutdown(func(context.Context, error) {})
		close(answered)
	}()
	select {
	case <-answered:
	case <-time.After(5 * time.Second):
		t.Fatal("Room and OnShutdown blocked while Connect was joining")
	}
	cancel()
	select {
	case err := <-joined:
		if err == nil {
			t.Fatal("Connect to a silent server succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Connect did not end with its context")
	}
}
