package dispatch_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/dispatch"
)

// A backend starting a call: the room is created with the agent's dispatch,
// so the agent is usually in the room within a second.
func ExampleClient_Create() {
	c := dispatch.NewClient("wss://lk.example.com", "API_KEY", "API_SECRET")
	d, err := c.Create(context.Background(), &livekit.CreateAgentDispatchRequest{
		AgentName:  "support-bot",
		Deployment: "staging",
		Room:       "call-42",
		Metadata:   `{"caller":"+15551234"}`,
	})
	switch {
	case errors.Is(err, dispatch.ErrInvalid):
		log.Fatal(err) // a bug in the request: the message says which field
	case err != nil:
		log.Fatal(err)
	}
	log.Printf("dispatch %s created", d.Id)
}

// Waiting until a worker took the job, for a backend that must know the
// agent is on its way before it tells the caller to join.
func ExampleWaitForJob() {
	c := dispatch.NewClient("wss://lk.example.com", "API_KEY", "API_SECRET")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.Create(ctx, &livekit.CreateAgentDispatchRequest{AgentName: "support-bot", Room: "call-43"}, dispatch.WaitForJob())
	if err != nil {
		log.Fatalf("no agent took the call: %v", err)
	}
}
