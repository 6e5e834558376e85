// Package echoagent is the echo agent of the examples and of the lkagent
// CLI: it joins the job's room and answers every chat message and data
// packet it receives with the same text, prefixed with the deployment that
// answered ("echo[staging]: hello"), so whoever talks to it sees which
// deployment took the job.
//
//	w, err := worker.New(worker.Options{AgentName: "echo", OnRequest: echoagent.OnRequest}, echoagent.Handle)
package echoagent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/livekit/protocol/livekit"
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

// message is one text received in the room.
type message struct {
	from  string
	text  string
	topic string
	chat  bool // a chat message, answered with a chat message
}

// Handle joins the job's room and echoes messages until the job ends: the
// server terminates it, the worker drains, or the agent is disconnected from
// the room (the room was deleted or closed, or the agent was removed), which
// ends the job successfully.
func Handle(ctx context.Context, j *job.Job) error {
	log := j.Logger()
	in := make(chan message, 64)
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
		m := message{from: params.SenderIdentity}
		switch p := p.(type) {
		case *lksdk.UserDataPacket:
			m.text, m.topic = string(p.Payload), p.Topic
		case *livekit.ChatMessage:
			m.text, m.chat = p.GetMessage(), true
		default:
			return
		}
		select {
		case in <- m:
		default:
			log.Warn("too many messages waiting; dropped one", slog.String("from", m.from))
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
		case m := <-in:
			if err := answer(room, j.Deployment(), m); err != nil {
				log.Warn("reply failed", slog.String("to", m.from), slog.Any("error", err))
				continue
			}
			log.Debug("echoed", slog.String("to", m.from), slog.Int("bytes", len(m.text)))
		}
	}
}

// answer sends the reply to m, to its sender only.
func answer(room *lksdk.Room, deployment string, m message) error {
	reply := Reply(deployment, m.text)
	opts := []lksdk.DataPublishOption{lksdk.WithDataPublishReliable(true)}
	if m.from != "" {
		opts = append(opts, lksdk.WithDataPublishDestination([]string{m.from}))
	}
	if m.chat {
		return room.LocalParticipant.PublishDataPacket(lksdk.ChatMessage(time.Now(), reply), opts...)
	}
	pkt := lksdk.UserData([]byte(reply))
	pkt.Topic = m.topic
	return room.LocalParticipant.PublishDataPacket(pkt, opts...)
}
