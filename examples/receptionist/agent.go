package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/job"
)

// ChatTopic is the text stream topic of chat messages, as LiveKit's
// frontends and agent frameworks use it.
const ChatTopic = "lk.chat"

// Metadata is what a dispatch may tell the receptionist, as JSON in the
// dispatch's metadata. All fields are optional.
type Metadata struct {
	// Caller is the identity of the participant to serve; empty: the first
	// participant who is not an agent.
	Caller string `json:"caller,omitempty"`
}

// chat is a chat message received in the room.
type chat struct {
	from string
	text string
}

// newHandler returns the receptionist's job handler for the named clinic.
//
// The handler joins the room, waits for its caller, and serves them with
// [job.Job.OnParticipant]: greets them and answers each of their chat
// messages with a [Desk] until they leave the room, then ends the job with
// [job.Job.Shutdown]. The handler itself stays until the job's context
// ends: returning earlier would hang up on the caller.
func newHandler(clinic string) job.Handler {
	return func(ctx context.Context, j *job.Job) error {
		var md Metadata
		if m := j.Metadata(); m != "" {
			if err := json.Unmarshal([]byte(m), &md); err != nil {
				return fmt.Errorf("dispatch metadata %q: want JSON like {\"caller\":\"identity\"}: %w", m, err)
			}
		}
		log := j.Logger()

		// The SDK calls these callbacks on its own goroutines: they hand
		// off and never block.
		inbox := make(chan chat, 64)
		post := func(c chat) {
			select {
			case inbox <- c:
			default:
				log.Warn("too many chat messages waiting; dropped one", slog.String("from", c.from))
			}
		}
		cb := lksdk.NewRoomCallback()
		cb.OnDataPacket = func(p lksdk.DataPacket, params lksdk.DataReceiveParams) {
			if m, ok := p.(*livekit.ChatMessage); ok { // the legacy chat packet
				post(chat{from: params.SenderIdentity, text: m.GetMessage()})
			}
		}
		room, err := j.Connect(ctx, cb)
		if err != nil {
			return err
		}
		// Text streams: the SDK runs this handler on a goroutine of its own
		// per stream, which ReadAll holds until the stream is complete.
		err = room.RegisterTextStreamHandler(ChatTopic, func(r *lksdk.TextStreamReader, from string) {
			post(chat{from: from, text: r.ReadAll()})
		})
		if err != nil {
			return fmt.Errorf("register the chat handler: %w", err)
		}

		var opts []job.ParticipantOption
		if md.Caller != "" {
			opts = append(opts, job.WithIdentity(md.Caller))
		}
		caller, err := j.WaitForParticipant(ctx, opts...)
		if err != nil {
			return err // the job ended before the caller came
		}
		log.Info("caller joined", slog.String("caller", caller.Identity()))

		// Serve this caller, and only them: callCtx ends when they leave
		// the room, or when the job ends.
		j.OnParticipant(func(callCtx context.Context, p *lksdk.RemoteParticipant) {
			desk := NewDesk(clinic)
			say := func(text string) {
				room.LocalParticipant.SendText(text, lksdk.StreamTextOptions{
					Topic: ChatTopic, DestinationIdentities: []string{p.Identity()},
				})
			}
			say(desk.Greeting(displayName(p)))
			started := time.Now()
			for {
				select {
				case <-callCtx.Done():
					if errors.Is(context.Cause(callCtx), job.ErrParticipantLeft) {
						log.Info("caller left; the call is over", slog.String("caller", p.Identity()),
							slog.Duration("call", time.Since(started)), slog.Int("booked", len(desk.Booked())))
						j.Shutdown("the caller left") // ends the job
					}
					return
				case c := <-inbox:
					if c.from != p.Identity() {
						log.Debug("ignored a message from someone else", slog.String("from", c.from))
						continue
					}
					say(desk.Reply(c.text))
				}
			}
		}, job.WithIdentity(caller.Identity()))

		<-ctx.Done() // the caller left, the server terminated the job, or the worker drains
		return nil
	}
}

// displayName is the participant's name, else their identity.
func displayName(p *lksdk.RemoteParticipant) string {
	if n := p.Name(); n != "" {
		return n
	}
	return p.Identity()
}
