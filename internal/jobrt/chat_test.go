package jobrt

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

// The inbox never blocks the SDK's goroutines: past ChatBuffer messages,
// newer ones are dropped, counted and logged once (within a second).
func TestChatInboxOverflow(t *testing.T) {
	var log bytes.Buffer
	j, ctl := New(context.Background(), Params{Info: &livekit.Job{Id: "AJ_1"}, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	chat := j.Chat()
	if j.Chat() != chat {
		t.Fatal("Chat returned a second inbox")
	}
	const extra = 5
	for i := range ChatBuffer + extra {
		if i%2 == 0 {
			j.postChat(nil, ChatMessage{From: "alice", Text: strconv.Itoa(i)})
		} else {
			j.chatPacket(&livekit.ChatMessage{Message: strconv.Itoa(i)}, lksdk.DataReceiveParams{SenderIdentity: "bob"})
		}
	}
	if got := chat.Dropped(); got != extra {
		t.Errorf("Dropped = %d, want %d", got, extra)
	}
	if n := strings.Count(log.String(), "inbox full"); n != 1 {
		t.Errorf("%d overflow warnings, want 1:\n%s", n, log.String())
	}
	i := 0
	for m := range chat.Messages(t.Context()) {
		legacy := i%2 == 1
		if m.Text != strconv.Itoa(i) || m.Legacy != legacy || m.Received.IsZero() {
			t.Fatalf("message %d = %+v", i, m)
		}
		if i++; i == ChatBuffer {
			break
		}
	}
	// The job's end ends the waits, with its cause.
	ctl.Cancel(ErrTerminated)
	if _, err := chat.Receive(context.Background()); !errors.Is(err, ErrTerminated) {
		t.Errorf("Receive after the job ended: %v, want ErrTerminated", err)
	}
	// Nothing is queued once the job is over.
	j.postChat(nil, ChatMessage{From: "alice", Text: "late"})
	select {
	case m := <-chat.C():
		if m.Text == "late" {
			t.Errorf("a message was queued after the job ended")
		}
	default:
	}
	// Data packets other than chat do not reach the inbox.
	j.chatPacket(&lksdk.UserDataPacket{Payload: []byte("x")}, lksdk.DataReceiveParams{})
	select {
	case m := <-chat.C():
		t.Errorf("a data packet reached the chat inbox: %+v", m)
	default:
	}
}

// Sending needs the room.
func TestChatSendBeforeConnect(t *testing.T) {
	j, _ := New(context.Background(), Params{Info: &livekit.Job{Id: "AJ_1"}})
	if err := j.SendChat(t.Context(), "hi"); !errors.Is(err, ErrNotConnected) {
		t.Errorf("SendChat before Connect: %v", err)
	}
	if err := j.SendChatPacket("hi"); !errors.Is(err, ErrNotConnected) {
		t.Errorf("SendChatPacket before Connect: %v", err)
	}
}
