package job

import (
	"context"

	"github.com/lkagent/lkagent/internal/jobrt"
)

// ChatTopic is the topic of the text streams LiveKit's agent frameworks
// and clients use for chat ("lk.chat").
const ChatTopic = jobrt.ChatTopic

// ChatBuffer is how many received chat messages wait in a job's chat
// inbox ([Job.Chat]) before newer ones are dropped.
const ChatBuffer = jobrt.ChatBuffer

// ChatMessage is a chat message received in the job's room: its sender's
// identity (From), its Text, whether it came as a legacy
// livekit.ChatMessage data packet (Legacy) rather than a text stream,
// whether its sender is an agent (FromAgent), and when it was received.
type ChatMessage = jobrt.ChatMessage

// Chat is a job's chat inbox (see [Job.Chat]). Read it with Receive,
// Messages (an iterator) or C (a channel, for a select); Dropped counts the
// messages dropped because the inbox was full.
type Chat = jobrt.Chat

// Chat returns the job's chat inbox, created on first use: from then on,
// every chat message the agent receives in its room is queued there, both
// text streams on [ChatTopic] (how LiveKit's clients and agent frameworks
// chat) and legacy livekit.ChatMessage data packets. Call it before
// [Job.Connect] so that no message is missed.
//
// The SDK delivers messages on its own goroutines; the inbox never blocks
// them. It holds [ChatBuffer] messages: while it is full, newer messages
// are dropped, counted (Chat.Dropped) and logged at most once a second.
// The inbox takes over the room's text stream handler for ChatTopic: a
// program that registers its own does not use Chat.
func (j *Job) Chat() *Chat { return j.rt().Chat() }

// SendChat sends text as a chat message (a text stream on [ChatTopic]) to
// the participants of identities to, or to everyone in the room when to is
// empty. It needs the room ([Job.Connect]; else an error wrapping
// ErrNotConnected) and returns once the text is handed to the connection,
// or when ctx ends.
func (j *Job) SendChat(ctx context.Context, text string, to ...string) error {
	return j.rt().SendChat(ctx, text, to...)
}

// SendChatPacket sends text as a legacy livekit.ChatMessage data packet,
// for clients that read chat that way, to to or to everyone.
func (j *Job) SendChatPacket(text string, to ...string) error {
	return j.rt().SendChatPacket(text, to...)
}

// ReplyChat answers m, to its sender only, the way m came: a text stream,
// or a legacy packet.
func (j *Job) ReplyChat(ctx context.Context, m ChatMessage, text string) error {
	return j.rt().ReplyChat(ctx, m, text)
}
