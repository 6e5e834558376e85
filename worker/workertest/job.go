package workertest

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/livekit/protocol/livekit"
)

// NewJob returns a room job (JT_ROOM) for agentName and deployment ("" is
// production), with an id, a dispatch id and a room of its own: ids are
// random, so they never collide.
func NewJob(agentName, deployment string) *livekit.Job {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	n := hex.EncodeToString(b)
	return &livekit.Job{
		Id:         "AJ_" + n,
		DispatchId: "AD_" + n,
		Type:       livekit.JobType_JT_ROOM,
		Room:       &livekit.Room{Sid: "RM_" + n, Name: "room-" + n},
		AgentName:  agentName,
		Deployment: deployment,
	}
}
