package livekittest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/livekittest"
)

// chatAgent answers chat with the job's chat helpers: each reply says how
// the message came; "all: x" is answered to everyone.
func chatAgent(ctx context.Context, j *job.Job) error {
	chat := j.Chat()
	if _, err := j.Connect(ctx, nil); err != nil {
		return err
	}
	for m := range chat.Messages(ctx) {
		if m.FromAgent {
			continue
		}
		how := "stream"
		if m.Legacy {
			how = "packet"
		}
		if text, ok := strings.CutPrefix(m.Text, "all: "); ok {
			if err := j.SendChat(ctx, fmt.Sprintf("to all from %s: %s", m.From, text)); err != nil {
				return err
			}
			continue
		}
		if err := j.ReplyChat(ctx, m, fmt.Sprintf("%s %s: %s", how, m.From, m.Text)); err != nil {
			return err
		}
	}
	return nil
}

// The job's chat helpers against the real server: text streams on lk.chat
// (Caller.Chat's default) and legacy chat packets are received and answered
// in kind, to the sender only, or to everyone.
func TestJobChatHelpers(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("needs the real server")
	}
	srv := shared.Server(t)
	agent, room := livekittest.UniqueName("agent"), livekittest.UniqueName("room")
	runWorker(t, srv, agent, "", chatAgent)
	srv.Dispatch(t, room, agent, "", "")
	alice := srv.Join(t, room, "alice")
	bob := srv.Join(t, room, "bob")
	alice.WaitForAgent(t, agent)
	bob.WaitForAgent(t, agent)

	// A text stream, answered with a text stream.
	if got := alice.Chat(t, "hello", nil); got != "stream alice: hello" {
		t.Fatalf("reply to a text stream = %q", got)
	}
	// A legacy packet, answered with a legacy packet.
	if got := bob.ChatPacket(t, "hi", nil); got != "packet bob: hi" {
		t.Fatalf("reply to a legacy packet = %q", got)
	}
	// To everyone: both receive it.
	want := "to all from alice: lunch?"
	if got := alice.Chat(t, "all: lunch?", nil); got != want {
		t.Fatalf("alice got %q, want %q", got, want)
	}
	if got := bob.WaitChat(t, func(s string) bool { return strings.HasPrefix(s, "to all") }); got != want {
		t.Fatalf("bob got %q, want %q", got, want)
	}
	// Replies went to their sender only: by now (the message to all came
	// after them), bob would hold alice's.
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if got, err := bob.WaitChatContext(ctx, func(s string) bool { return strings.HasPrefix(s, "stream alice") }); err == nil {
		t.Fatalf("bob received the reply to alice: %q", got)
	}
}
