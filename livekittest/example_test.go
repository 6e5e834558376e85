package livekittest_test

import (
	"testing"

	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/livekittest"
	"github.com/lkagent/lkagent/worker"
)

// A whole end-to-end test of an agent's staging deployment: a real server,
// the worker, a dispatch to staging, a caller, a chat exchange.
func TestExampleStagingAgent(t *testing.T) {
	srv := livekittest.Start(t)
	w, err := worker.New(worker.Options{
		URL: srv.URL, APIKey: srv.APIKey, APISecret: srv.APISecret,
		AgentName: "support-bot", Deployment: "staging",
		Logger: livekittest.Logger(t), // the worker's lines in the test's log
	}, echoagent.Handle)
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(t.Context())

	room := livekittest.UniqueName("room")
	srv.Dispatch(t, room, "support-bot", "staging", "")
	caller := srv.Join(t, room, "caller")
	caller.WaitForAgent(t, "support-bot")
	if got := caller.Chat(t, "hello", nil); got != "echo[staging]: hello" {
		t.Fatalf("reply = %q, want %q", got, "echo[staging]: hello")
	}
}
