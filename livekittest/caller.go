package livekittest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

// ChatTopic is the topic of the text streams LiveKit's agent frameworks
// use for chat. A [Caller] receives text streams on it as chat messages.
const ChatTopic = "lk.chat"

// Caller is a participant joined to a room, talking to the agent there. It
// keeps every chat message and data packet it receives until a Wait or
// [Caller.Chat] takes it, so a reply that arrives before the wait begins
// is not lost. Its methods are safe for concurrent use.
type Caller struct {
	// Room is the caller's connection to the room, for anything the
	// helpers do not cover (tracks, RPC, attributes).
	Room *lksdk.Room
	// Identity is the caller's participant identity.
	Identity string

	mu      sync.Mutex
	seq     uint64    // sequence number of the last message received
	inbox   []message // received and not yet taken, oldest first
	gone    error     // set once disconnected
	changed chan struct{}
	leave   sync.Once
}

// message is a chat message or data packet the caller received.
type message struct {
	seq     uint64
	from    string
	chat    bool
	topic   string
	payload []byte
}

// Join joins room as identity ("" picks a unique one) with a token
// granting room join, and leaves when the test ends. It fails the test if
// the caller cannot join.
func (s *Server) Join(t testing.TB, room, identity string) *Caller {
	t.Helper()
	if identity == "" {
		identity = UniqueName("caller")
	}
	token, err := s.Token(room, identity).ToJWT()
	if err != nil {
		t.Fatalf("livekittest: token for %q: %v", identity, err)
	}
	return s.JoinWithToken(t, token)
}

// JoinWithToken joins the room token grants (see [Server.Token]) and
// leaves when the test ends. It fails the test if the caller cannot join.
func (s *Server) JoinWithToken(t testing.TB, token string) *Caller {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	c, err := s.JoinWithTokenContext(ctx, token)
	if err != nil {
		t.Fatalf("livekittest: %v", err)
	}
	t.Cleanup(c.Leave)
	return c
}

// JoinWithTokenContext joins the room token grants; the caller must [Caller.Leave].
func (s *Server) JoinWithTokenContext(ctx context.Context, token string) (*Caller, error) {
	c := &Caller{changed: make(chan struct{})}
	cb := lksdk.NewRoomCallback()
	cb.OnDataPacket = func(p lksdk.DataPacket, params lksdk.DataReceiveParams) {
		switch p := p.(type) {
		case *lksdk.UserDataPacket:
			c.receive(message{from: params.SenderIdentity, topic: p.Topic, payload: p.Payload})
		case *livekit.ChatMessage:
			c.receive(message{from: params.SenderIdentity, chat: true, payload: []byte(p.GetMessage())})
		}
	}
	cb.OnParticipantConnected = func(*lksdk.RemoteParticipant) { c.notify(nil) }
	cb.OnAttributesChanged = func(map[string]string, lksdk.Participant) { c.notify(nil) }
	cb.OnDisconnectedWithReason = func(reason lksdk.DisconnectionReason) {
		c.notify(fmt.Errorf("disconnected from the room: %s", reason))
	}
	c.Room = lksdk.NewRoom(cb)
	// Text streams on ChatTopic are chat messages; the handler runs on a
	// goroutine of its own and returns when the stream is complete.
	if err := c.Room.RegisterTextStreamHandler(ChatTopic, func(r *lksdk.TextStreamReader, from string) {
		c.receive(message{from: from, chat: true, topic: ChatTopic, payload: []byte(r.ReadAll())})
	}); err != nil {
		return nil, fmt.Errorf("register chat stream handler: %w", err)
	}
	if err := c.Room.JoinWithContextAndToken(ctx, s.URL, token, lksdk.WithLogger(lklogger.GetDiscardLogger())); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	c.Identity = c.Room.LocalParticipant.Identity()
	return c, nil
}

// receive adds m to the inbox.
func (c *Caller) receive(m message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	m.seq = c.seq
	c.inbox = append(c.inbox, m)
	c.changedLocked()
}

// notify wakes the waits; a non-nil gone records a disconnection.
func (c *Caller) notify(gone error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gone != nil && c.gone == nil {
		c.gone = gone
	}
	c.changedLocked()
}

func (c *Caller) changedLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Leave disconnects the caller from the room. Later calls do nothing.
func (c *Caller) Leave() {
	c.leave.Do(func() {
		// Recorded first: the disconnection's own callback (its reason
		// "leave requested by user") must not be what the waits report.
		c.notify(errors.New("left the room"))
		c.Room.Disconnect()
	})
}

// WaitForAgent waits until the caller sees an agent of agentName ("" for
// any agent) in the room (kind AGENT, attribute [AgentNameAttribute]) and
// returns it. The server tells participants of an agent that publishes no
// tracks about 3 s after it joined; [Server.WaitForAgent] is quicker. It
// fails the test after [Timeout].
func (c *Caller) WaitForAgent(t testing.TB, agentName string) *lksdk.RemoteParticipant {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	p, err := c.WaitForAgentContext(ctx, agentName)
	if err != nil {
		t.Fatalf("livekittest: %v", err)
	}
	return p
}

// WaitForAgentContext is [Caller.WaitForAgent] bounded by ctx.
func (c *Caller) WaitForAgentContext(ctx context.Context, agentName string) (*lksdk.RemoteParticipant, error) {
	// The room's list is checked on every participant event and, in case
	// one was missed, every 250 ms.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		c.mu.Lock()
		changed, gone := c.changed, c.gone
		c.mu.Unlock()
		for _, p := range c.Room.GetRemoteParticipants() {
			if p.Kind() == lksdk.ParticipantAgent && (agentName == "" || p.Attributes()[AgentNameAttribute] == agentName) {
				return p, nil
			}
		}
		if gone != nil {
			return nil, fmt.Errorf("caller %q: %w", c.Identity, gone)
		}
		select {
		case <-changed:
		case <-tick.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("caller %q saw no agent %q in room %q: %w", c.Identity, agentName, c.Room.Name(), context.Cause(ctx))
		}
	}
}

// SendChat sends text as a chat message to everyone in the room: a text
// stream on [ChatTopic], as LiveKit's clients and agent frameworks chat.
// It fails the test if the caller is no longer connected.
// [Caller.SendChatPacket] sends the legacy chat packet instead.
func (c *Caller) SendChat(t testing.TB, text string) {
	t.Helper()
	if err := c.sendChat(text, false); err != nil {
		t.Fatalf("livekittest: %v", err)
	}
}

// SendChatPacket sends text as a legacy chat message: a reliable
// livekit.ChatMessage data packet, to everyone in the room. It fails the
// test on error.
func (c *Caller) SendChatPacket(t testing.TB, text string) {
	t.Helper()
	if err := c.sendChat(text, true); err != nil {
		t.Fatalf("livekittest: %v", err)
	}
}

func (c *Caller) sendChat(text string, legacy bool) error {
	if !legacy {
		c.mu.Lock()
		gone := c.gone
		c.mu.Unlock()
		if gone != nil {
			return fmt.Errorf("caller %q: send chat: %w", c.Identity, gone)
		}
		c.Room.LocalParticipant.SendText(text, lksdk.StreamTextOptions{Topic: ChatTopic})
		return nil
	}
	if err := c.Room.LocalParticipant.PublishDataPacket(lksdk.ChatMessage(time.Now(), text), lksdk.WithDataPublishReliable(true)); err != nil {
		return fmt.Errorf("caller %q: send chat packet: %w", c.Identity, err)
	}
	return nil
}

// SendText sends text as a text stream on topic to everyone in the room.
// It fails the test if the caller is no longer connected.
func (c *Caller) SendText(t testing.TB, topic, text string) {
	t.Helper()
	c.mu.Lock()
	gone := c.gone
	c.mu.Unlock()
	if gone != nil {
		t.Fatalf("livekittest: caller %q: send text: %v", c.Identity, gone)
	}
	c.Room.LocalParticipant.SendText(text, lksdk.StreamTextOptions{Topic: topic})
}

// SendData sends payload as a reliable data packet on topic to everyone in
// the room. It fails the test on error.
func (c *Caller) SendData(t testing.TB, topic string, payload []byte) {
	t.Helper()
	pkt := lksdk.UserData(payload)
	pkt.Topic = topic
	if err := c.Room.LocalParticipant.PublishDataPacket(pkt, lksdk.WithDataPublishReliable(true)); err != nil {
		t.Fatalf("livekittest: caller %q: send data on topic %q: %v", c.Identity, topic, err)
	}
}

// Chat sends text as a chat message (a text stream on [ChatTopic]) and
// returns the first chat message received after it that match accepts
// (nil accepts any), whether the reply came as a text stream or a legacy
// packet. Wait for the agent first ([Caller.WaitForAgent]): a message sent
// before the agent is in the room never reaches it. It fails the test
// after [Timeout]. [Caller.ChatPacket] sends the legacy chat packet.
func (c *Caller) Chat(t testing.TB, text string, match func(string) bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	reply, err := c.ChatContext(ctx, text, match)
	if err != nil {
		t.Fatalf("livekittest: %v", err)
	}
	return reply
}

// ChatContext is [Caller.Chat] bounded by ctx.
func (c *Caller) ChatContext(ctx context.Context, text string, match func(string) bool) (string, error) {
	return c.chat(ctx, text, match, false)
}

// ChatPacket is [Caller.Chat] with the legacy chat message: a
// livekit.ChatMessage data packet, which older clients send.
func (c *Caller) ChatPacket(t testing.TB, text string, match func(string) bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	reply, err := c.ChatPacketContext(ctx, text, match)
	if err != nil {
		t.Fatalf("livekittest: %v", err)
	}
	return reply
}

// ChatPacketContext is [Caller.ChatPacket] bounded by ctx.
func (c *Caller) ChatPacketContext(ctx context.Context, text string, match func(string) bool) (string, error) {
	return c.chat(ctx, text, match, true)
}

func (c *Caller) chat(ctx context.Context, text string, match func(string) bool, legacy bool) (string, error) {
	c.mu.Lock()
	after := c.seq
	c.mu.Unlock()
	if err := c.sendChat(text, legacy); err != nil {
		return "", err
	}
	m, err := c.take(ctx, after, chatMatch(match))
	if err != nil {
		return "", fmt.Errorf("no reply to chat message %q: %w", text, err)
	}
	return string(m.payload), nil
}

// WaitChat returns the first chat message received (a livekit.ChatMessage
// packet or a text stream on [ChatTopic]) that match accepts (nil accepts
// any) and that no earlier wait took. It fails the test after [Timeout].
func (c *Caller) WaitChat(t testing.TB, match func(string) bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	text, err := c.WaitChatContext(ctx, match)
	if err != nil {
		t.Fatalf("livekittest: %v", err)
	}
	return text
}

// WaitChatContext is [Caller.WaitChat] bounded by ctx.
func (c *Caller) WaitChatContext(ctx context.Context, match func(string) bool) (string, error) {
	m, err := c.take(ctx, 0, chatMatch(match))
	if err != nil {
		return "", fmt.Errorf("no chat message: %w", err)
	}
	return string(m.payload), nil
}

// WaitData returns the payload of the first data packet received on topic
// that no earlier wait took. It fails the test after [Timeout].
func (c *Caller) WaitData(t testing.TB, topic string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	payload, err := c.WaitDataContext(ctx, topic)
	if err != nil {
		t.Fatalf("livekittest: %v", err)
	}
	return payload
}

// WaitDataContext is [Caller.WaitData] bounded by ctx.
func (c *Caller) WaitDataContext(ctx context.Context, topic string) ([]byte, error) {
	m, err := c.take(ctx, 0, func(m message) bool { return !m.chat && m.topic == topic })
	if err != nil {
		return nil, fmt.Errorf("no data packet on topic %q: %w", topic, err)
	}
	return m.payload, nil
}

func chatMatch(match func(string) bool) func(message) bool {
	return func(m message) bool { return m.chat && (match == nil || match(string(m.payload))) }
}

// take removes and returns the first message received after sequence
// number after that ok accepts, waiting for it until ctx ends or the
// caller is disconnected.
func (c *Caller) take(ctx context.Context, after uint64, ok func(message) bool) (message, error) {
	for {
		c.mu.Lock()
		for i, m := range c.inbox {
			if m.seq > after && ok(m) {
				c.inbox = slices.Delete(c.inbox, i, i+1)
				c.mu.Unlock()
				return m, nil
			}
		}
		changed, gone := c.changed, c.gone
		c.mu.Unlock()
		if gone != nil {
			return message{}, fmt.Errorf("caller %q: %w", c.Identity, gone)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return message{}, fmt.Errorf("caller %q: %w", c.Identity, context.Cause(ctx))
		}
	}
}
