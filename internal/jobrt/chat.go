package jobrt

import (
	"context"
	"fmt"
	"iter"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

// ChatTopic is the topic of the text streams LiveKit's agent frameworks
// use for chat.
const ChatTopic = "lk.chat"

// ChatBuffer is how many received chat messages wait in a job's inbox.
const ChatBuffer = 64

// ChatMessage is a chat message received in the job's room.
type ChatMessage struct {
	// From is the identity of the participant who sent it.
	From string
	// Text is the message.
	Text string
	// Legacy: it came as a livekit.ChatMessage data packet, not as a text
	// stream on ChatTopic. [Job.ReplyChat] answers in the same form.
	Legacy bool
	// FromAgent: the sender is an agent participant (as far as the room
	// knew when the message arrived). Answering agents can loop forever.
	FromAgent bool
	// Received is when the job received it.
	Received time.Time
}

// Chat is a job's chat inbox: the messages received in its room, in order.
type Chat struct {
	job     *Job
	in      chan ChatMessage
	dropped atomic.Int64
	warned  atomic.Int64 // unix nanoseconds of the last overflow warning
}

// Chat returns the job's chat inbox, created on first use: from then on,
// every chat message received in the room (text streams on ChatTopic and
// livekit.ChatMessage data packets) is queued in it. Call it before
// Connect to miss nothing. The SDK's goroutines only ever post to the
// inbox without blocking; when ChatBuffer messages wait, newer ones are
// dropped, counted (Dropped) and logged at most once a second.
func (j *Job) Chat() *Chat {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.chat != nil {
		return j.chat
	}
	j.chat = &Chat{job: j, in: make(chan ChatMessage, ChatBuffer)}
	j.chatOn.Store(j.chat)
	if r := j.joining.Load(); r != nil {
		j.registerChat(r)
	}
	return j.chat
}

// registerChat receives chat text streams in room r. j.mu is held.
func (j *Job) registerChat(r *lksdk.Room) {
	err := r.RegisterTextStreamHandler(ChatTopic, func(reader *lksdk.TextStreamReader, from string) {
		// The SDK runs this on a goroutine of its own per stream, which
		// ReadAll holds until the stream is complete.
		defer j.recoverCallback("chat text stream")
		text := reader.ReadAll()
		j.postChat(r, ChatMessage{From: from, Text: text})
	})
	if err != nil {
		j.log.Warn("chat: text streams on "+ChatTopic+" have another handler; the chat inbox gets chat data packets only", slog.Any("error", err))
	}
}

// postChat queues m without blocking.
func (j *Job) postChat(r *lksdk.Room, m ChatMessage) {
	c := j.chatOn.Load()
	if c == nil || j.ctx.Err() != nil {
		return // no inbox, or the job is over: nobody will read it
	}
	m.Received = time.Now()
	if r != nil {
		if p := r.GetParticipantByIdentity(m.From); p != nil {
			m.FromAgent = p.Kind() == lksdk.ParticipantAgent
		}
	}
	select {
	case c.in <- m:
		return
	default:
	}
	n := c.dropped.Add(1)
	now := time.Now().UnixNano()
	if last := c.warned.Load(); now-last >= int64(time.Second) && c.warned.CompareAndSwap(last, now) {
		j.log.Warn("chat: inbox full, message dropped", slog.String("from", m.From), slog.Int64("dropped_total", n),
			slog.Int("inbox", ChatBuffer))
	}
}

// C is the inbox as a channel, for a select. It is never closed: the job's
// context says when to stop.
func (c *Chat) C() <-chan ChatMessage { return c.in }

// Dropped is how many messages were dropped because the inbox was full.
func (c *Chat) Dropped() int64 { return c.dropped.Load() }

// Receive returns the next message, waiting until one comes, ctx ends or
// the job ends (then the error wraps the cause).
func (c *Chat) Receive(ctx context.Context) (ChatMessage, error) {
	select {
	case m := <-c.in:
		return m, nil
	case <-ctx.Done():
		return ChatMessage{}, fmt.Errorf("chat: %w", context.Cause(ctx))
	case <-c.job.ctx.Done():
		return ChatMessage{}, fmt.Errorf("chat: %w", context.Cause(c.job.ctx))
	}
}

// Messages iterates over the messages received, until ctx ends or the job
// ends.
func (c *Chat) Messages(ctx context.Context) iter.Seq[ChatMessage] {
	return func(yield func(ChatMessage) bool) {
		for {
			m, err := c.Receive(ctx)
			if err != nil || !yield(m) {
				return
			}
		}
	}
}

// SendChat sends text as a chat message, a text stream on ChatTopic, to
// the participants of identities to, or to everyone in the room when to is
// empty. It returns once the text was handed to the connection, or when
// ctx ends.
func (j *Job) SendChat(ctx context.Context, text string, to ...string) error {
	room := j.Room()
	if room == nil {
		return fmt.Errorf("job %s: send chat: %w", j.ID(), ErrNotConnected)
	}
	return sendChatStream(ctx, room, text, to)
}

// SendChatPacket sends text as a legacy livekit.ChatMessage data packet
// (reliable), for clients that read chat that way, to to or to everyone.
func (j *Job) SendChatPacket(text string, to ...string) error {
	room := j.Room()
	if room == nil {
		return fmt.Errorf("job %s: send chat packet: %w", j.ID(), ErrNotConnected)
	}
	opts := []lksdk.DataPublishOption{lksdk.WithDataPublishReliable(true)}
	if len(to) > 0 {
		opts = append(opts, lksdk.WithDataPublishDestination(to))
	}
	if err := room.LocalParticipant.PublishDataPacket(lksdk.ChatMessage(time.Now(), text), opts...); err != nil {
		return fmt.Errorf("job %s: send chat packet: %w", j.ID(), err)
	}
	return nil
}

// ReplyChat answers m, to its sender only, in the form m came in (a text
// stream, or a legacy packet).
func (j *Job) ReplyChat(ctx context.Context, m ChatMessage, text string) error {
	if m.Legacy {
		return j.SendChatPacket(text, m.From)
	}
	return j.SendChat(ctx, text, m.From)
}

// sendChatStream writes text as one text stream on ChatTopic and closes it
// once written (or when ctx ends).
func sendChatStream(ctx context.Context, room *lksdk.Room, text string, to []string) error {
	w := room.LocalParticipant.StreamText(lksdk.StreamTextOptions{
		Topic: ChatTopic, DestinationIdentities: to, TotalSize: uint64(len(text)),
	})
	written := make(chan struct{})
	var once sync.Once
	done := func() { once.Do(func() { close(written) }) }
	w.Write(text, &done)
	defer w.Close()
	select {
	case <-written:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("send chat: %w", context.Cause(ctx))
	}
}

// chatPacket posts a legacy chat data packet to the inbox.
func (j *Job) chatPacket(p lksdk.DataPacket, params lksdk.DataReceiveParams) {
	if cm, ok := p.(*livekit.ChatMessage); ok {
		j.postChat(j.joining.Load(), ChatMessage{From: params.SenderIdentity, Text: cm.GetMessage(), Legacy: true})
	}
}
