package workertest

import (
	"fmt"
	"sync/atomic"

	"github.com/livekit/protocol/livekit"
)

var jobSeq atomic.Uint64

// NewJob returns a room job (JT_ROOM) for agentName and deployment ("" is
// production), with an id, a dispatch id and a room of its own: ids are
// unique within the process.
func NewJob(agentName, deployment string) *livekit.Job {
	n := jobSeq.Add(1)
	return &livekit.Job{
		Id:         fmt.Sprintf("AJ_workertest%d", n),
		DispatchId: fmt.Sprintf("AD_workertest%d", n),
		Type:       livekit.JobType_JT_ROOM,
		Room:       &livekit.Room{Sid: fmt.Sprintf("RM_workertest%d", n), Name: fmt.Sprintf("room-%d", n)},
		AgentName:  agentName,
		Deployment: deployment,
	}
}
