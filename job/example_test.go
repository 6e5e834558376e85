package job_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/job/jobtest"
)

// A handler serves its job until the job's context ends: here the server
// terminates the job (the dispatch was deleted). Package jobtest runs the
// handler without a server.
func ExampleHandler() {
	handler := func(ctx context.Context, j *job.Job) error {
		j.OnShutdown(func(_ context.Context, reason error) {
			fmt.Println("shutdown hook:", reason)
		})
		fmt.Printf("job %s for %s (deployment %q) in room %s\n", j.ID(), j.AgentName(), j.Deployment(), j.RoomName())
		<-ctx.Done()
		return ctx.Err()
	}

	tj := jobtest.New(jobtest.Options{ID: "AJ_1", AgentName: "support-bot", Deployment: "staging", Room: "room-1"})
	tj.Cancel(job.ErrTerminated) // as when the server deletes the dispatch
	res := tj.Run(handler)
	fmt.Println("reported as failed:", res.Outcome != nil)
	// Output:
	// job AJ_1 for support-bot (deployment "staging") in room room-1
	// shutdown hook: job terminated by server
	// reported as failed: false
}

// OnRequest functions receive a Request and accept or reject it.
func ExampleRequest_Accept() {
	onRequest := func(ctx context.Context, r *job.Request) error {
		if r.Metadata() == "blocked" {
			return r.Reject()
		}
		return r.Accept(job.AcceptOptions{Identity: "bot-" + r.RoomName(), Attributes: map[string]string{"tier": "gold"}})
	}

	req := jobtest.NewRequest(jobtest.Options{ID: "AJ_2", Room: "room-2"})
	_ = onRequest(context.Background(), req.Request())
	decided, accepted, opts := req.Decision()
	fmt.Println(decided, accepted, opts.Identity, opts.Attributes["tier"])
	// Output: true true bot-room-2 gold
}

// A handler ends its own job with Shutdown; the job still counts as a
// success.
func ExampleJob_Shutdown() {
	res := jobtest.New(jobtest.Options{}).Run(func(ctx context.Context, j *job.Job) error {
		j.Shutdown("caller hung up")
		<-ctx.Done()
		fmt.Println("cause:", context.Cause(ctx))
		return ctx.Err()
	})
	fmt.Println("reported as failed:", res.Outcome != nil, errors.Is(res.Err, context.Canceled))
	// Output:
	// cause: job shut down by its handler: caller hung up
	// reported as failed: false true
}

// A goroutine started with Go that fails ends the job: its context is
// cancelled with the failure, the handler returns, and the job is reported
// failed with it. A panic would be reported the same way, as a
// *job.PanicError with the stack.
func ExampleJob_Go() {
	res := jobtest.New(jobtest.Options{}).Run(func(ctx context.Context, j *job.Job) error {
		j.Go(func(ctx context.Context) error {
			return errors.New("transcriber: connection refused")
		})
		<-ctx.Done() // the job's work; here, wait for the failure
		fmt.Println("cause:", context.Cause(ctx))
		return ctx.Err()
	})
	fmt.Println("reported as failed:", res.Outcome)
	// Output:
	// cause: job goroutine failed: transcriber: connection refused
	// reported as failed: job goroutine failed: transcriber: connection refused
}

// A handler waits for its caller: a phone caller (SIP) here, whether they
// are already in the room or join later.
func ExampleJob_WaitForParticipant() {
	handler := func(ctx context.Context, j *job.Job) error {
		if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
			return err
		}
		caller, err := j.WaitForParticipant(ctx, job.WithKind(livekit.ParticipantInfo_SIP))
		if err != nil {
			return err // the job ended before anyone called
		}
		j.Logger().Info("caller joined", "identity", caller.Identity())
		<-ctx.Done()
		return nil
	}
	_ = handler
}

// A participant entrypoint serves each participant with a context of its
// own, which ends when that participant leaves. This job ends when its
// caller leaves.
func ExampleJob_OnParticipant() {
	handler := func(ctx context.Context, j *job.Job) error {
		j.OnParticipant(func(ctx context.Context, p *lksdk.RemoteParticipant) {
			j.Logger().Info("serving", "identity", p.Identity())
			<-ctx.Done() // serve p until they leave
			if errors.Is(context.Cause(ctx), job.ErrParticipantLeft) {
				j.Shutdown(p.Identity() + " left")
			}
		}, job.WithIdentity("caller"))
		if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	}
	_ = handler
}

// The server API, with the worker's credentials: here, who else is in the
// job's room. Test jobs have no credentials unless given some.
func ExampleJob_API() {
	handler := func(ctx context.Context, j *job.Job) error {
		api, err := j.API()
		if err != nil {
			return err
		}
		res, err := api.Room.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: j.RoomName()})
		if err != nil {
			return fmt.Errorf("list participants: %w", err)
		}
		j.Logger().Info("in the room", "participants", len(res.GetParticipants()))
		return nil
	}

	res := jobtest.New(jobtest.Options{}).Run(handler)
	fmt.Println(errors.Is(res.Outcome, job.ErrNoCredentials))
	// Output: true
}

// DeleteRoom ends the call for everyone: here, when the caller says so.
func ExampleJob_DeleteRoom() {
	endCall := func(ctx context.Context, j *job.Job) {
		if err := j.DeleteRoom(ctx); err != nil {
			j.Logger().Warn("could not end the call", "error", err)
		}
		// The agent is disconnected too: the job's context ends with
		// job.ErrRoomDisconnected, a successful end.
	}
	_ = endCall
}

// A handler that answers chat: text streams on lk.chat and legacy chat
// packets arrive in the job's chat inbox, and each is answered to its
// sender in the form it came. (Needs a server: not run here.)
func ExampleJob_Chat() {
	handler := func(ctx context.Context, j *job.Job) error {
		chat := j.Chat() // before Connect, so that no message is missed
		if _, err := j.Connect(ctx, nil); err != nil {
			return err
		}
		if err := j.SendChat(ctx, "Hello! Ask me anything."); err != nil { // to everyone
			return err
		}
		for m := range chat.Messages(ctx) { // until the job ends
			if m.FromAgent {
				continue
			}
			if err := j.ReplyChat(ctx, m, "you said: "+m.Text); err != nil {
				j.Logger().Warn("reply failed", "error", err)
			}
		}
		return ctx.Err()
	}
	_ = handler
}
