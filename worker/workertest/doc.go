// Package workertest is an in-process fake of the LiveKit server's side of
// the agent worker protocol (the /agent WebSocket), for tests of agent
// workers and of the programs around them.
//
// A [Server] accepts worker connections on a loopback port, checks their
// token, answers registrations and pings, and hands every registered
// connection to the test as a [Conn]. Through a Conn the test plays the
// server: it offers jobs, assigns them, terminates them, and reads what the
// worker reported (job statuses, worker statuses, close code). It can also
// break the connection in the ways real networks and servers do: drop it,
// stop answering pings, send malformed, oversized or unknown frames, or ask
// the worker to go away.
//
//	srv := workertest.NewServer(t) // closed when the test ends
//	w, err := worker.New(worker.Options{
//		URL: srv.URL(), APIKey: "key", APISecret: "secret", AgentName: "bot",
//	}, handle)
//	...
//	go w.Run(ctx)
//	conn, err := srv.WaitWorker(ctx)
//	j := workertest.NewJob("bot", "")
//	res, err := conn.Dispatch(ctx, j) // offer, and assign if accepted
//	st, err := conn.WaitJobStatus(ctx, j.Id, livekit.JobStatus_JS_SUCCESS)
//
// Unlike the real server, the fake never offers jobs on its own: every
// offer comes from the test, sent to the connection the test chose.
//
// The fake records every message a worker sends, which is what tests want.
// For long runs (benchmarks, soak tests) set Options.NoRecord, which keeps
// its memory constant, and observe the messages with Options.OnMessage.
package workertest
