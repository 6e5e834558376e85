package held

import (
	"context"
	"errors"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"

	"github.com/lkagent/lkagent/internal/lkurl"
)

// Server is API and LeaseAPI over a LiveKit server's Twirp APIs, each call
// bounded by Timeout.
type Server struct {
	rooms      *lksdk.RoomServiceClient
	dispatches *lksdk.AgentDispatchClient
	timeout    time.Duration
}

// NewServer returns the API of the server at url (ws, wss, http or https).
// Each call is bounded by timeout.
func NewServer(url, apiKey, apiSecret string, timeout time.Duration) *Server {
	u := lkurl.HTTP(url)
	return &Server{
		rooms:      lksdk.NewRoomServiceClient(u, apiKey, apiSecret),
		dispatches: lksdk.NewAgentDispatchServiceClient(u, apiKey, apiSecret),
		timeout:    timeout,
	}
}

// ListRooms implements API.
func (s *Server) ListRooms(ctx context.Context, names ...string) ([]*livekit.Room, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	res, err := s.rooms.ListRooms(ctx, &livekit.ListRoomsRequest{Names: names})
	if err != nil {
		return nil, err
	}
	return res.GetRooms(), nil
}

// ListDispatches implements API.
func (s *Server) ListDispatches(ctx context.Context, room string) ([]*livekit.AgentDispatch, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	res, err := s.dispatches.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: room})
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return res.GetAgentDispatches(), nil
}

// DeleteDispatch implements API.
func (s *Server) DeleteDispatch(ctx context.Context, room, id string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, err := s.dispatches.DeleteDispatch(ctx, &livekit.DeleteAgentDispatchRequest{Room: room, DispatchId: id})
	if isNotFound(err) {
		return ErrGone
	}
	return err
}

// CreateDispatch implements API.
func (s *Server) CreateDispatch(ctx context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.dispatches.CreateDispatch(ctx, req)
}

// LeaseRoom implements LeaseAPI.
func (s *Server) LeaseRoom(ctx context.Context, room string) (string, bool, error) {
	rooms, err := s.ListRooms(ctx, room)
	if err != nil {
		return "", false, err
	}
	for _, r := range rooms {
		if r.GetName() == room {
			return r.GetMetadata(), true, nil
		}
	}
	return "", false, nil
}

// leaseRoomTimeout is how long an unused lease room lives: a fleet that
// stops sweeping leaves nothing behind for long.
const leaseRoomTimeout = 10 * time.Minute

// WriteLease implements LeaseAPI.
func (s *Server) WriteLease(ctx context.Context, room, metadata string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, err := s.rooms.UpdateRoomMetadata(ctx, &livekit.UpdateRoomMetadataRequest{Room: room, Metadata: metadata})
	if err == nil || !isNotFound(err) {
		return err
	}
	// The room's configuration names an agent no worker registers as, so
	// that the server does not dispatch the automatic agent to it.
	_, err = s.rooms.CreateRoom(ctx, &livekit.CreateRoomRequest{
		Name: room, Metadata: metadata, EmptyTimeout: uint32(leaseRoomTimeout / time.Second),
		Agents: []*livekit.RoomAgentDispatch{{AgentName: room}},
	})
	return err
}

func isNotFound(err error) bool {
	var te twirp.Error
	return errors.As(err, &te) && te.Code() == twirp.NotFound
}
