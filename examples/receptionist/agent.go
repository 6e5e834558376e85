package main

import (
	"context"
	"encoding/json"
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
// The handler joins the room, waits for its caller, greets them, answers
// each of their chat messages with a [Desk], and ends the job when the
// caller leaves the room: returning earlier would hang up on them.
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
		left := make(chan struct{}, 1) // someone left: is it the caller?
		cb := lksdk.NewRoomCallback()
		cb.OnDataPacket = func(p lksdk.DataPacket, params lksdk.DataReceiveParams) {
			if m, ok := p.(*livekit.ChatMessage); ok { // the legacy chat packet
				post(chat{from: params.SenderIdentity, text: m.GetMessage()})
			}
		}
		cb.OnParticipantDisconnected = func(*lksdk.RemoteParticipant) {
			select {
			case left <- struct{}{}:
			default: // a check is already pending
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

		desk := NewDesk(clinic)
		say := func(text string) {
			room.LocalParticipant.SendText(text, lksdk.StreamTextOptions{
				Topic: ChatTopic, DestinationIdentities: []string{caller.Identity()},
			})
		}
		say(desk.Greeting(displayName(caller)))
		started := time.Now()
		for {
			select {
			case <-ctx.Done():
				return nil // terminated by the server, or the worker drains
			case <-left:
				// The SDK forgets a participant before it calls back, and
				// makes a new one for an identity that joins again.
				if room.GetParticipantByIdentity(caller.Identity()) != caller {
					log.Info("caller left; the call is over", slog.String("caller", caller.Identity()),
						slog.Duration("call", time.Since(started)), slog.Int("booked", len(desk.Booked())))
					return nil // returning ends the job
				}
			case c := <-inbox:
				if c.from != caller.Identity() {
					log.Debug("ignored a message from someone else", slog.String("from", c.from))
					continue
				}
				say(desk.Reply(c.text))
			}
		}
	}
}

// displayName is the participant's name, else their identity.
func displayName(p *lksdk.RemoteParticipant) string {
	if n := p.Name(); n != "" {
		return n
	}
	return p.Identity()
}
