// Package echoagent is the echo agent of the examples and of the lkagent
// CLI: it joins the job's room and answers every chat message (a text
// stream on "lk.chat", or a legacy chat packet) and data packet it receives,
// in the form it came, with the same text, prefixed with the deployment that
// answered ("echo[staging]: hello"), so whoever talks to it sees which
// deployment took the job.
//
//	w, err := worker.New(worker.Options{AgentName: "echo", OnRequest: echoagent.OnRequest}, echoagent.Handle)
package echoagent

import (
	"context"
	"fmt"
	"log/slog"

	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/job"
)

// Participant attributes the agent joins with (see [OnRequest]).
const (
	AttrAgent      = "agent"      // always "echo"
	AttrDeployment = "deployment" // the job's deployment, "production" for ""
)

// IdentityPrefix starts the identity of every echo agent participant.
const IdentityPrefix = "echo-"

// DeploymentLabel names a deployment for people: "" is "production".
func DeploymentLabel(deployment string) string {
	if deployment == "" {
		return "production"
	}
	return deployment
}

// Reply is the agent's answer to text, for a job of deployment.
func Reply(deployment, text string) string {
	return fmt.Sprintf("echo[%s]: %s", DeploymentLabel(deployment), text)
}

// Identity is the identity the agent joins the room of job jobID with.
func Identity(jobID string) string { return IdentityPrefix + jobID }

// OnRequest accepts every offer (the worker has already checked that the
// agent name and deployment are its own) and joins with a custom identity,
// display name and attributes, which name the deployment for the other
// participants of the room.
func OnRequest(_ context.Context, r *job.Request) error {
	label := DeploymentLabel(r.Deployment())
	return r.Accept(job.AcceptOptions{
		Identity:   Identity(r.ID()),
		Name:       "Echo (" + label + ")",
		Attributes: map[string]string{AttrAgent: "echo", AttrDeployment: label},
	})
}

// packet is one data packet received in the room.
type packet struct {
	from  string
	text  string
	topic string
}

// Handle joins the job's room and echoes chat messages (text streams on
// job.ChatTopic, answered the same way, and legacy chat packets, answered
// with one) and data packets until the job ends: the server terminates it,
// the worker drains, or the agent is disconnected from the room (the room
// was deleted or closed, or the agent was removed), which ends the job
// successfully.
func Handle(ctx context.Context, j *job.Job) error {
	log := j.Logger()
	chat := j.Chat() // before Connect: no message is missed
	in := make(chan packet, 64)
	gone := make(chan lksdk.DisconnectionReason, 1)
	cb := lksdk.NewRoomCallback()
	cb.OnDisconnectedWithReason = func(reason lksdk.DisconnectionReason) {
		select {
		case gone <- reason:
		default:
		}
	}
	cb.OnDataPacket = func(p lksdk.DataPacket, params lksdk.DataReceiveParams) {
		// Never answer another agent: two echo agents would talk forever.
		if params.Sender != nil && params.Sender.Kind() == lksdk.ParticipantAgent {
			return
		}
		u, ok := p.(*lksdk.UserDataPacket) // chat packets go to the chat inbox
		if !ok {
			return
		}
		select {
		case in <- packet{from: params.SenderIdentity, text: string(u.Payload), topic: u.Topic}:
		default:
			log.Warn("too many messages waiting; dropped one", slog.String("from", params.SenderIdentity))
		}
	}
	room, err := j.Connect(ctx, cb)
	if err != nil {
		return err
	}
	log.Info("echo agent joined the room", slog.String("identity", j.Identity()))
	for {
		select {
		case <-ctx.Done():
			// The server ended the job, or the worker drains: both are a
			// normal end of this job.
			return ctx.Err()
		case reason := <-gone:
			log.Info("disconnected from the room; job done", slog.String("reason", string(reason)))
			return nil
		case m := <-chat.C():
			if m.FromAgent {
				continue
			}
			if err := j.ReplyChat(ctx, m, Reply(j.Deployment(), m.Text)); err != nil {
				log.Warn("reply failed", slog.String("to", m.From), slog.Any("error", err))
				continue
			}
			log.Debug("echoed chat", slog.String("to", m.From), slog.Bool("legacy", m.Legacy), slog.Int("bytes", len(m.Text)))
		case p := <-in:
			if err := answer(room, j.Deployment(), p); err != nil {
				log.Warn("reply failed", slog.String("to", p.from), slog.Any("error", err))
				continue
			}
			log.Debug("echoed", slog.String("to", p.from), slog.Int("bytes", len(p.text)))
		}
	}
}

// answer sends the reply to p, to its sender only, on p's topic.
func answer(room *lksdk.Room, deployment string, p packet) error {
	opts := []lksdk.DataPublishOption{lksdk.WithDataPublishReliable(true)}
	if p.from != "" {
		opts = append(opts, lksdk.WithDataPublishDestination([]string{p.from}))
	}
	pkt := lksdk.UserData([]byte(Reply(deployment, p.text)))
	pkt.Topic = p.topic
	return room.LocalParticipant.PublishDataPacket(pkt, opts...)
}
