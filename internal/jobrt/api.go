package jobrt

import (
	"context"
	"fmt"
	"strings"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

// API holds clients of the LiveKit server API, authorized with the
// worker's credentials.
type API struct {
	Room     *lksdk.RoomServiceClient
	Dispatch *lksdk.AgentDispatchClient
	Egress   *lksdk.EgressClient
}

// API returns clients of the server API built from the credentials the
// runtime gave the job (the worker's URL, API key and secret), the same
// ones on every call. A job without them (a test job, for example) gets
// an error that wraps ErrNoCredentials and names what is missing.
func (j *Job) API() (*API, error) {
	api, err := j.clients()
	if err != nil {
		return nil, fmt.Errorf("job: %w", err)
	}
	return api, nil
}

// clients builds the API clients on first use.
func (j *Job) clients() (*API, error) {
	j.apiOnce.Do(func() {
		var missing []string
		if j.apiURL == "" {
			missing = append(missing, "URL")
		}
		if j.apiKey == "" {
			missing = append(missing, "API key")
		}
		if j.secrets.apiSecret == "" {
			missing = append(missing, "API secret")
		}
		if len(missing) > 0 {
			list := strings.Join(missing, ", ")
			if n := len(missing); n > 1 {
				list = strings.Join(missing[:n-1], ", ") + " or " + missing[n-1]
			}
			if j.origin != "" {
				j.apiErr = fmt.Errorf("%w: %s gave this job no %s (set its APIKey and APISecret, and URL or APIURL)", ErrNoCredentials, j.origin, list)
				return
			}
			j.apiErr = fmt.Errorf("%w: the runtime gave this job no %s", ErrNoCredentials, list)
			return
		}
		key, secret := j.apiKey, j.secrets.apiSecret
		j.api = &API{
			Room:     lksdk.NewRoomServiceClient(j.apiURL, key, secret),
			Dispatch: lksdk.NewAgentDispatchServiceClient(j.apiURL, key, secret),
			Egress:   lksdk.NewEgressClient(j.apiURL, key, secret),
		}
	})
	return j.api, j.apiErr
}

// DeleteRoom deletes the job's room on the server: every participant is
// disconnected, which ends the call for everyone. The job's own
// connection goes too, so its context is then cancelled with
// ErrRoomDisconnected (a successful end).
func (j *Job) DeleteRoom(ctx context.Context) error {
	api, err := j.clients()
	if err != nil {
		return fmt.Errorf("job %s: delete room %q: %w", j.ID(), j.RoomName(), err)
	}
	if _, err := api.Room.DeleteRoom(ctx, &livekit.DeleteRoomRequest{Room: j.RoomName()}); err != nil {
		return fmt.Errorf("job %s: delete room %q: %w", j.ID(), j.RoomName(), err)
	}
	return nil
}
