package restart

import (
	"context"
	"errors"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"
)

// errGone is what deleteDispatch returns when the dispatch no longer exists.
var errGone = errors.New("dispatch no longer exists")

// serverAPI is what a Restarter needs of the server: the seam the tests
// replace.
type serverAPI interface {
	roomExists(ctx context.Context, room string) (bool, error)
	participants(ctx context.Context, room string) ([]*livekit.ParticipantInfo, error)
	dispatches(ctx context.Context, room string) ([]*livekit.AgentDispatch, error)
	// deleteDispatch deletes the dispatch; errGone if it did not exist. On
	// the server this is atomic: of concurrent deletes of one dispatch,
	// exactly one succeeds.
	deleteDispatch(ctx context.Context, room, id string) error
	// removeParticipant removes the participant; nil if it was not there.
	removeParticipant(ctx context.Context, room, identity string) error
	createDispatch(ctx context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error)
}

// lkAPI is serverAPI over the server SDK's Twirp clients, each call bounded
// by timeout.
type lkAPI struct {
	rooms    *lksdk.RoomServiceClient
	dispatch *lksdk.AgentDispatchClient
	timeout  time.Duration
}

func newLKAPI(o Options) *lkAPI {
	u := httpURL(o.URL)
	return &lkAPI{
		rooms:    lksdk.NewRoomServiceClient(u, o.APIKey, o.APISecret),
		dispatch: lksdk.NewAgentDispatchServiceClient(u, o.APIKey, o.APISecret),
		timeout:  o.APITimeout,
	}
}

func (a *lkAPI) roomExists(ctx context.Context, room string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	res, err := a.rooms.ListRooms(ctx, &livekit.ListRoomsRequest{Names: []string{room}})
	if err != nil {
		return false, err
	}
	for _, r := range res.Rooms {
		if r.Name == room {
			return true, nil
		}
	}
	return false, nil
}

func (a *lkAPI) participants(ctx context.Context, room string) ([]*livekit.ParticipantInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	res, err := a.rooms.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: room})
	if err != nil {
		return nil, err
	}
	return res.Participants, nil
}

func (a *lkAPI) dispatches(ctx context.Context, room string) ([]*livekit.AgentDispatch, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	res, err := a.dispatch.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: room})
	if err != nil {
		return nil, err
	}
	return res.AgentDispatches, nil
}

func (a *lkAPI) deleteDispatch(ctx context.Context, room, id string) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	_, err := a.dispatch.DeleteDispatch(ctx, &livekit.DeleteAgentDispatchRequest{Room: room, DispatchId: id})
	if isNotFound(err) {
		return errGone
	}
	return err
}

func (a *lkAPI) removeParticipant(ctx context.Context, room, identity string) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	_, err := a.rooms.RemoveParticipant(ctx, &livekit.RoomParticipantIdentity{Room: room, Identity: identity})
	if isNotFound(err) {
		return nil
	}
	return err
}

func (a *lkAPI) createDispatch(ctx context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	return a.dispatch.CreateDispatch(ctx, req)
}

// isNotFound reports whether err is the server's "not found" answer.
func isNotFound(err error) bool {
	var te twirp.Error
	return errors.As(err, &te) && te.Code() == twirp.NotFound
}

// isUnauthorized reports whether err is the server rejecting the key or
// secret.
func isUnauthorized(err error) bool {
	var te twirp.Error
	return errors.As(err, &te) && (te.Code() == twirp.Unauthenticated || te.Code() == twirp.PermissionDenied)
}
