package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/internal/sdklog"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

func runConsole(ctx context.Context, e *env, args []string) error {
	const name = "console"
	f := newFlags(name, "--agent-name NAME [--deployment D] [--room ROOM] [--identity ID] [flags]",
		"Talks to an agent from the terminal: joins ROOM (a new one unless given) as ID, dispatches agent\n"+
			"NAME of deployment D (empty is production) into it, and sends every line typed as a chat message\n"+
			"(a text stream on \"lk.chat\"). The agent's replies, and its joining and leaving, are printed as\n"+
			"they come. End with Ctrl-D or Ctrl-C: the dispatch is deleted and the console leaves the room.")
	c := addConn(f)
	agentName := f.fs.String("agent-name", "", "agent name the workers registered with")
	deployment := f.fs.String("deployment", "", "deployment to dispatch to; empty is production")
	room := f.fs.String("room", "", "room to join and dispatch the agent into; default a new console-… room")
	identity := f.fs.String("identity", "console", "participant identity of the console")
	metadata := f.fs.String("metadata", "", "metadata handed to the job")
	f.env("room", "LKAGENT_ROOM")
	f.env("agent-name", "LKAGENT_AGENT_NAME")
	f.env("deployment", worker.EnvDeployment)
	f.required("agent-name")
	if err := f.parse(e, args); err != nil {
		return err
	}
	if err := checkTarget(e, f, *agentName, *deployment); err != nil {
		return err
	}
	if err := c.check(name); err != nil {
		return err
	}
	if *room == "" {
		*room = uniqName("console")
	}
	// The terminal is the conversation's: the WebRTC library's lines,
	// which go to the SDK's process-wide logger, are dropped.
	sdklog.Install(slog.New(slog.DiscardHandler))
	out := &syncWriter{w: e.stdout}
	for _, n := range f.envNotes() {
		fmt.Fprintln(out, n)
	}
	return console(ctx, out, os.Stdin, c, consoleTarget{
		room: *room, identity: *identity, agentName: *agentName, deployment: *deployment, metadata: *metadata,
	})
}

// consoleTarget is what a console dispatches and where it joins.
type consoleTarget struct {
	room, identity, agentName, deployment, metadata string
}

// console joins the room, dispatches the agent, and chats until in ends or
// ctx does.
func console(ctx context.Context, out io.Writer, in io.Reader, c *conn, t consoleTarget) error {
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	token, err := auth.NewAccessToken(c.apiKey, c.apiSecret).
		SetIdentity(t.identity).SetName("lkagent console").
		SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: t.room}).
		SetValidFor(24 * time.Hour).ToJWT()
	if err != nil {
		return fmt.Errorf("sign a join token: %w", err)
	}

	gone := make(chan string, 1)
	// The server tells participants about an agent that publishes no
	// tracks ~3 s after it joined; the room service knows at once. Both
	// are watched, and each arrival is shown once.
	seen := &presence{in: map[string]bool{}}
	agentHere := make(chan struct{}) // closed when the first agent joined
	var agentOnce sync.Once
	joined := func(identity string, agent bool, agentName string) {
		if !seen.arrive(identity) {
			return
		}
		if agent {
			agentOnce.Do(func() { close(agentHere) })
			say("* agent %s joined (agent name %s)", deploy.Escape(identity), deploy.Escape(agentName))
		} else {
			say("* %s joined", deploy.Escape(identity))
		}
	}
	cb := lksdk.NewRoomCallback()
	cb.OnParticipantConnected = func(p *lksdk.RemoteParticipant) {
		joined(p.Identity(), p.Kind() == lksdk.ParticipantAgent, p.Attributes()["lk.agent_name"])
	}
	cb.OnParticipantDisconnected = func(p *lksdk.RemoteParticipant) {
		seen.leave(p.Identity())
		what := ""
		if p.Kind() == lksdk.ParticipantAgent {
			what = "agent "
		}
		say("* %s%s left", what, deploy.Escape(p.Identity()))
	}
	cb.OnDataPacket = func(p lksdk.DataPacket, params lksdk.DataReceiveParams) {
		if m, ok := p.(*livekit.ChatMessage); ok {
			printChat(out, params.SenderIdentity, m.GetMessage())
		}
	}
	cb.OnDisconnectedWithReason = func(reason lksdk.DisconnectionReason) {
		select {
		case gone <- string(reason):
		default:
		}
	}
	r := lksdk.NewRoom(cb)
	if err := r.RegisterTextStreamHandler(job.ChatTopic, func(reader *lksdk.TextStreamReader, from string) {
		// The SDK runs this on a goroutine of its own per stream.
		printChat(out, from, reader.ReadAll())
	}); err != nil {
		return err
	}
	jctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := r.JoinWithContextAndToken(jctx, c.url, token, lksdk.WithLogger(lklogger.GetDiscardLogger())); err != nil {
		if ctx.Err() != nil {
			return interrupted(ctx)
		}
		return fmt.Errorf("join room %q at %s: %w", t.room, c.url, err)
	}
	defer r.Disconnect()
	say("joined room %s as %s", deploy.Escape(t.room), deploy.Escape(t.identity))

	api := dispatchClient(c)
	d, err := api.CreateDispatch(jctx, &livekit.CreateAgentDispatchRequest{
		Room: t.room, AgentName: t.agentName, Deployment: t.deployment, Metadata: t.metadata,
	})
	if err != nil {
		return c.apiError(jctx, fmt.Sprintf("create dispatch of agent %q in room %q", t.agentName, t.room), err)
	}
	say("dispatched agent %s (deployment %s) as %s; waiting for it to join", deploy.Escape(t.agentName), deploymentLabel(t.deployment), d.GetId())
	say("type a message and Enter to send it; Ctrl-D or Ctrl-C ends")
	defer func() {
		// Ending the dispatch ends the agent's job: it leaves the room.
		// The dispatch may have been replaced meanwhile (a held dispatch
		// served by a worker that registered after it was made): delete
		// the agent's dispatches of this deployment in the room, whatever
		// their IDs.
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
		defer dcancel()
		res, err := api.ListDispatch(dctx, &livekit.ListAgentDispatchRequest{Room: t.room})
		if err != nil {
			say("could not list the room's dispatches to end the agent's: %v", err)
			return
		}
		for _, ld := range res.GetAgentDispatches() {
			if ld.GetAgentName() != t.agentName || ld.GetDeployment() != t.deployment {
				continue
			}
			if _, err := api.DeleteDispatch(dctx, &livekit.DeleteAgentDispatchRequest{Room: t.room, DispatchId: ld.GetId()}); err != nil {
				say("could not delete dispatch %s: %v", ld.GetId(), err)
				continue
			}
			say("deleted dispatch %s", ld.GetId())
		}
	}()

	// Agents joining, from the room service, once a second until the
	// console returns.
	watchDone := make(chan struct{})
	var watch sync.WaitGroup
	defer func() { close(watchDone); watch.Wait() }()
	watch.Add(1)
	go func() {
		defer watch.Done()
		rooms := lksdk.NewRoomServiceClient(c.httpURL(), c.apiKey, c.apiSecret)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			rctx, cancel := context.WithTimeout(ctx, c.timeout)
			res, err := rooms.ListParticipants(rctx, &livekit.ListParticipantsRequest{Room: t.room})
			cancel()
			if err == nil {
				for _, p := range res.GetParticipants() {
					if p.GetKind() == livekit.ParticipantInfo_AGENT {
						joined(p.GetIdentity(), true, p.GetAttributes()["lk.agent_name"])
					}
				}
			}
			select {
			case <-watchDone:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()

	// Lines typed: read on a goroutine of their own, which ends at the end
	// of input (a terminal's read cannot be interrupted; the process
	// exits right after the console returns).
	lines := make(chan string)
	inDone := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
		inDone <- sc.Err()
	}()
	// Lines typed before an agent is in the room would reach nobody: they
	// wait for it.
	var held []string
	waitAgent := agentHere
	for {
		select {
		case <-waitAgent:
			waitAgent = nil
			for _, line := range held {
				r.LocalParticipant.SendText(line, lksdk.StreamTextOptions{Topic: job.ChatTopic})
			}
			held = nil
			continue
		case <-ctx.Done():
			say("")
			return nil
		case reason := <-gone:
			return fmt.Errorf("disconnected from the room: %s", reason)
		case err := <-inDone:
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read input: %w", err)
			}
			return nil
		case line := <-lines:
			line = strings.TrimSpace(line)
			if line == "" {
				continue
			}
			if waitAgent != nil {
				held = append(held, line)
				say("(held until the agent joins)")
				continue
			}
			r.LocalParticipant.SendText(line, lksdk.StreamTextOptions{Topic: job.ChatTopic})
		}
	}
}

// presence remembers the participants shown as joined.
type presence struct {
	mu sync.Mutex
	in map[string]bool
}

// arrive records identity and reports whether it is new.
func (p *presence) arrive(identity string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.in[identity] {
		return false
	}
	p.in[identity] = true
	return true
}

// leave forgets identity.
func (p *presence) leave(identity string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.in, identity)
}

// printChat prints a chat message in one write, every line escaped so
// that no control character reaches the terminal.
func printChat(out io.Writer, from, text string) {
	var b strings.Builder
	for i, line := range strings.Split(text, "\n") {
		if i == 0 {
			fmt.Fprintf(&b, "%s: %s\n", deploy.Escape(from), deploy.Escape(line))
		} else {
			fmt.Fprintf(&b, "  %s\n", deploy.Escape(line))
		}
	}
	_, _ = io.WriteString(out, b.String())
}

// uniqName returns prefix plus a random suffix.
func uniqName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}
