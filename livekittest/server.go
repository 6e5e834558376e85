package livekittest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
)

// Timeout bounds every wait of the helpers that take a testing.TB. It is
// generous because a loaded machine slows the server down: an observer
// learns of an agent that publishes no tracks about 3 s after it joined,
// and dispatches take seconds when many run at once.
const Timeout = time.Minute

// AgentNameAttribute is the participant attribute in which the server
// names the agent a participant of kind AGENT runs.
const AgentNameAttribute = "lk.agent_name"

// Options configures a server started with [StartWithOptions]. The zero
// value is what [Start] uses.
type Options struct {
	// LogLevel is the lowest level of server log lines passed to Logs and
	// kept for failure reports: "debug", "info" (the default), "warn" or
	// "error". At "debug" the server logs every job status it receives.
	LogLevel string
	// Logs, if set, receives the server's output at LogLevel.
	Logs io.Writer
	// WebhookURLs, if set, are the URLs the server posts its webhooks to
	// (room and participant events), signed with the server's API key.
	WebhookURLs []string
	// AgentsTargetLoad is the server's agents.target_load: the server
	// offers jobs only while its available workers' loads sum below it.
	// 0 keeps the server's default, 0.7.
	AgentsTargetLoad float64
}

// Server is a running LiveKit server with its credentials. Its methods are
// safe for concurrent use.
type Server struct {
	// URL is the WebSocket URL participants and workers connect to,
	// ws://127.0.0.1:PORT.
	URL string
	// HTTPURL is the base URL of the server API, http://127.0.0.1:PORT.
	HTTPURL string
	// APIKey and APISecret are the only key pair the server accepts.
	APIKey    string
	APISecret string

	lk         *lkserver.Server
	log        *serverLog
	rooms      *lksdk.RoomServiceClient
	dispatches *lksdk.AgentDispatchClient

	mu       sync.Mutex
	inflight map[string]int // dispatches awaiting their job, by inflightKey
}

// Start starts a LiveKit server for the test and stops it when the test
// ends. It fails the test if the server cannot be started; if the test
// failed, the end of the server's output is logged when it stops. The
// server binary is built on first use, with the progress in the test log.
//
// Under go test -short, Start skips the test instead: -short is the inner
// loop, and the tests that need a real server run without it.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWithOptions(t, Options{})
}

// StartWithOptions is [Start] with options.
func StartWithOptions(t testing.TB, o Options) *Server {
	t.Helper()
	lkserver.SkipShort(t)
	s, err := start(t.Context(), testLog{t}, o)
	if err != nil {
		t.Fatalf("livekittest: start livekit-server: %v", err)
	}
	t.Cleanup(func() {
		if err := s.lk.Stop(); err != nil {
			t.Errorf("livekittest: stop livekit-server: %v", err)
		} else if t.Failed() {
			s.logTail(t)
		}
	})
	return s
}

// start locates (building it if needed, with progress lines to progress)
// and starts a server. ctx bounds the build and the start only.
func start(ctx context.Context, progress io.Writer, o Options) (*Server, error) {
	lo, log, err := serverOptions(o)
	if err != nil {
		return nil, err
	}
	if lo.Binary, err = lkserver.Binary(ctx, progress); err != nil {
		return nil, err
	}
	lk, err := lkserver.Start(ctx, lo)
	if err != nil {
		return nil, err
	}
	return newServer(lk, log), nil
}

// serverOptions are the options of the server o asks for, whose output
// goes to the returned log.
func serverOptions(o Options) (lkserver.Options, *serverLog, error) {
	var level string
	switch strings.ToLower(o.LogLevel) {
	case "", "info", "warn", "error":
		level = "info" // see serverLog: the kit needs the server's info lines
	case "debug":
		level = "debug"
	default:
		return lkserver.Options{}, nil, fmt.Errorf("Options.LogLevel %q: want debug, info, warn or error", o.LogLevel)
	}
	log := newServerLog(o.LogLevel, o.Logs)
	return lkserver.Options{
		Logs:             log,
		LogLevel:         level,
		WebhookURLs:      o.WebhookURLs,
		AgentsTargetLoad: o.AgentsTargetLoad,
	}, log, nil
}

// newServer is the kit's view of lk, whose output goes to log.
func newServer(lk *lkserver.Server, log *serverLog) *Server {
	return &Server{
		URL:        lk.URL(),
		HTTPURL:    lk.HTTPURL(),
		APIKey:     lk.APIKey(),
		APISecret:  lk.APISecret(),
		lk:         lk,
		log:        log,
		rooms:      lksdk.NewRoomServiceClient(lk.HTTPURL(), lk.APIKey(), lk.APISecret()),
		dispatches: lksdk.NewAgentDispatchServiceClient(lk.HTTPURL(), lk.APIKey(), lk.APISecret()),
		inflight:   make(map[string]int),
	}
}

// logTail logs the end of the server's output to t.
func (s *Server) logTail(t testing.TB) {
	t.Helper()
	t.Logf("end of livekit-server output (%s):\n%s", s.URL, s.RecentLogs())
}

// RecentLogs returns the last lines (about 300) of the server's output at
// [Options.LogLevel].
func (s *Server) RecentLogs() string { return s.log.String() }

// RoomClient returns a client of the server's room service.
func (s *Server) RoomClient() *lksdk.RoomServiceClient { return s.rooms }

// DispatchClient returns a client of the server's agent dispatch service.
// Unlike [Server.Dispatch], its CreateDispatch creates a dispatch once and
// returns at once.
func (s *Server) DispatchClient() *lksdk.AgentDispatchClient { return s.dispatches }

// Token returns an access token for identity that may join room, to be
// extended (for example with SetAgents, to dispatch an agent when the
// participant creates the room) and signed with ToJWT.
func (s *Server) Token(room, identity string) *auth.AccessToken {
	return auth.NewAccessToken(s.APIKey, s.APISecret).
		SetIdentity(identity).
		SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: room}).
		SetValidFor(time.Hour)
}

// ListDispatches returns the dispatches of room, among them the dispatch
// of the automatic agent (agent name "") that the server adds to every room
// it creates. It fails the test on error.
func (s *Server) ListDispatches(t testing.TB, room string) []*livekit.AgentDispatch {
	t.Helper()
	res, err := s.dispatches.ListDispatch(t.Context(), &livekit.ListAgentDispatchRequest{Room: room})
	if err != nil {
		t.Fatalf("livekittest: list dispatches of room %q: %v", room, err)
	}
	return res.GetAgentDispatches()
}

// DeleteRoom deletes room: the server disconnects everyone in it, agents
// included, whose jobs then end. It fails the test on error.
func (s *Server) DeleteRoom(t testing.TB, room string) {
	t.Helper()
	if _, err := s.rooms.DeleteRoom(t.Context(), &livekit.DeleteRoomRequest{Room: room}); err != nil {
		t.Fatalf("livekittest: delete room %q: %v", room, err)
	}
}

// Participants returns the participants of room, none if the room does
// not exist. It fails the test on any other error.
func (s *Server) Participants(t testing.TB, room string) []*livekit.ParticipantInfo {
	t.Helper()
	ps, err := s.participants(t.Context(), room)
	if err != nil {
		t.Fatalf("livekittest: list participants of room %q: %v", room, err)
	}
	return ps
}

func (s *Server) participants(ctx context.Context, room string) ([]*livekit.ParticipantInfo, error) {
	res, err := s.rooms.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: room})
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return res.GetParticipants(), nil
}

// WaitForAgent waits until an agent of agentName ("" for any agent) is
// connected to room (kind AGENT, attribute [AgentNameAttribute], state
// ACTIVE) and returns it. It asks the server's room service, so it sees
// the agent seconds sooner than a participant of the room would. It fails
// the test after [Timeout].
func (s *Server) WaitForAgent(t testing.TB, room, agentName string) *livekit.ParticipantInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	p, err := s.WaitForAgentContext(ctx, room, agentName)
	if err != nil {
		t.Fatalf("livekittest: %v", err)
	}
	return p
}

// WaitForAgentContext is [Server.WaitForAgent] bounded by ctx.
func (s *Server) WaitForAgentContext(ctx context.Context, room, agentName string) (*livekit.ParticipantInfo, error) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		ps, err := s.participants(ctx, room)
		if err != nil {
			last = err
		}
		for _, p := range ps {
			if p.GetKind() == livekit.ParticipantInfo_AGENT && p.GetState() == livekit.ParticipantInfo_ACTIVE &&
				(agentName == "" || p.GetAttributes()[AgentNameAttribute] == agentName) {
				return p, nil
			}
		}
		select {
		case <-ctx.Done():
			err := fmt.Errorf("no agent %q connected to room %q: %w", agentName, room, context.Cause(ctx))
			if last != nil {
				err = fmt.Errorf("%w (last error from the room service: %v)", err, last)
			}
			return nil, err
		case <-tick.C:
		}
	}
}

// UniqueName returns prefix followed by a dash and 12 random hex digits,
// for room names, identities and agent names that tests sharing a server
// must not share.
func UniqueName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails
	return prefix + "-" + hex.EncodeToString(b)
}

// isNotFound reports whether err is the server API's "not found".
func isNotFound(err error) bool {
	var te twirp.Error
	return errors.As(err, &te) && te.Code() == twirp.NotFound
}

// testLog writes build progress lines to a test log.
type testLog struct{ t testing.TB }

// Write implements io.Writer.
func (w testLog) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
