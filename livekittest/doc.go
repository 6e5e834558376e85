// Package livekittest runs a real LiveKit server for end-to-end tests of
// agents: it starts the server, dispatches agents to rooms, joins rooms as
// a caller and exchanges chat and data messages with the agent.
//
//	srv := livekittest.Start(t)
//	// ... run your worker against srv.URL, srv.APIKey, srv.APISecret ...
//	room := livekittest.UniqueName("room")
//	srv.Dispatch(t, room, "support-bot", "staging", "")
//	caller := srv.Join(t, room, "caller")
//	caller.WaitForAgent(t, "support-bot")
//	reply := caller.Chat(t, "hello", nil)
//
// The server is livekit-server v1.13.5, built once per machine with
// `go install` into the user cache directory (the first run takes a few
// minutes; set LIVEKIT_SERVER_BIN to use another binary). It listens on
// free loopback ports with a random key and secret, so test packages can
// run in parallel. [Start] stops it when the test ends; [Shared] shares one
// server between the tests of a package.
//
// Helpers that take a testing.TB fail the test on error and must be called
// from the test's goroutine; their waits give up after [Timeout]. The
// methods named …Context return errors instead and can be called from any
// goroutine.
//
// # Dispatching right after a worker starts
//
// The server answers a worker's registration before it routes jobs to it,
// and drops, never to retry, a dispatch it cannot place at once: a test
// that starts a worker and dispatches straight away would be flaky.
// [Server.Dispatch] therefore waits until the server has logged the
// registration of a worker of the agent name, creates the dispatch, and
// watches the server's log and its dispatch API until a worker has taken
// the job. When the server says it dropped the job (no worker of that name
// and deployment yet, or none with capacity), or says nothing for several
// seconds, Dispatch deletes the dispatch, so that no late job of it can
// start, and creates it again. So Dispatch returns once a worker of that
// agent name and deployment has accepted the room job, and fails the test
// if none has within [Timeout].
//
// Dispatch retries rather than probing first because the server has no API
// that lists registered workers or their deployments: the only probe is a
// real job, which would run the agent under test in a room of its own.
// Retrying the very dispatch the test wants costs nothing when the worker
// is ready and costs a second or two when it is not.
//
// Dispatch is for agents that take room jobs (the default job type). To
// test an agent that refuses a job, or one that takes publisher or
// participant jobs, create the dispatch with [Server.DispatchClient].
//
// # Logging
//
// The participants the kit joins log through a discarded logger of their
// own. The worker under test logs through its Options.Logger, and points
// server-sdk-go's process-wide logger (which the WebRTC library beneath
// its rooms uses) at it unless KeepSDKLogger is set or the test binary
// called lksdk.SetLogger itself (in TestMain). [Logger] gives it the
// test's log: what is logged after the test ended, which the SDK's
// goroutines do, is dropped instead of failing the test under -race.
//
// # The inner loop: go test -short
//
// Under go test -short, [Start], [StartWithOptions] and [Shared.Server]
// skip the test that asks for a server, so -short runs only the tests that
// need none (unit tests, tests against a fake). A test gets this without a
// line of its own; the full run, without -short, runs everything.
package livekittest
