package guard_test

import (
	"context"
	"log"
	"net/http"

	"github.com/lkagent/lkagent/guard"
)

// A guard next to the server: the server posts its webhooks to
// http://HOST:8089/webhook (webhook: {api_key: KEY, urls: [...]}).
func ExampleNewWebhook() {
	r, err := guard.New(guard.Options{}) // LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(guard.WebhookPath, guard.NewWebhook(r, guard.WebhookOptions{}))
	log.Fatal(http.ListenAndServe(":8089", mux))
}

// What a worker does when one of its jobs fails: the guard, if it sees the
// same failure, finds it handled.
func ExampleRestarter_Restart() {
	r, err := guard.New(guard.Options{})
	if err != nil {
		log.Fatal(err)
	}
	d, err := r.Restart(context.Background(), guard.Failure{
		Room: "room-1", AgentName: "support-bot", Deployment: "staging",
		Identity: "agent-AJ_x", JobID: "AJ_x", DispatchID: "AD_y",
		Reason: "AGENT_ERROR", // the handler failed
	})
	if err != nil {
		log.Printf("restart: %v", err)
		return
	}
	log.Printf("%s: %s", d.Outcome, d.Detail)
}
