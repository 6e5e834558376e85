// Package guard restarts LiveKit agents that died in a room that still
// needs them, which the open-source LiveKit server does not do on its own:
// it keeps a dispatch's restart policy (JRP_ON_FAILURE, the default, or
// JRP_NEVER) without acting on it, so a caller whose agent's worker died
// waits in the room with no agent.
//
// A [Restarter] decides about one failed agent and, if the rules allow,
// replaces its dispatch with a new one for the same agent name, deployment,
// metadata and attributes; a worker calls [Restarter.Restart] when one of its
// jobs fails. A [Webhook] receives the server's signed webhooks and hands it
// every agent that left its room with a failure (a killed worker's agent
// times out ~20 s after the kill), so agents of any SDK are covered.
//
// An agent is restarted only if it failed ([IsFailure]: CONNECTION_TIMEOUT,
// SIGNAL_CLOSE, JOIN_FAILURE, STATE_MISMATCH, MEDIA_FAILURE, AGENT_ERROR),
// its dispatch still exists with policy JRP_ON_FAILURE, it ran a room job,
// the room still exists with someone other than agents in it, and fewer than
// Options.MaxRestarts restarts of that room, agent and deployment happened
// in Options.Window. Restarts of one key are spaced by a doubling backoff.
// The dispatch is claimed by deleting it: the server lets exactly one of
// concurrent deletes succeed, so a failure seen by several processes (a
// worker and a guard, two guards, a webhook delivered twice) is restarted
// once. Every restart and refusal is logged and counted
// (lkagent_restarts_total, lkagent_restart_refusals_total).
//
// The shortest use, a guard next to the server (configured with
// webhook: {api_key: KEY, urls: [http://guard:8089/webhook]}):
//
//	r, err := guard.New(guard.Options{}) // LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET
//	if err != nil {
//		log.Fatal(err)
//	}
//	http.Handle(guard.WebhookPath, guard.NewWebhook(r, guard.WebhookOptions{}))
//	log.Fatal(http.ListenAndServe(":8089", nil))
//
// The lkagent command runs one: lkagent guard --listen :8089.
//
// A [Held] serves held dispatches: dispatches the server dropped because no
// worker of their agent name and deployment took their job (none was
// registered, or all were full). The server never offers them again; a
// Held re-creates each (claimed by deleting it, so exactly once) and
// exports lkagent_dispatches_unserved{agent_name,deployment}, the signal to
// scale a deployment from zero. lkagent guard runs one too (--held); lkagent
// workers serve their own (worker.Options.Held). See docs/dispatch.md.
package guard
