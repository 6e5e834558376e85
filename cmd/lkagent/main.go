// Command lkagent is the command line of the lkagent runtime: a demo of
// deployment-aware routing against a real local LiveKit server, agent
// dispatches and join tokens that name a deployment, a local development
// server, and the example echo agent as a worker.
//
//	lkagent demo                                   # staging and production side by side, routed
//	lkagent server                                 # a local LiveKit server for development
//	lkagent worker --agent-name echo --deployment staging
//	lkagent dispatch create --room r1 --agent-name echo --deployment staging
//	lkagent token --identity caller --room r1 --agent-name echo --deployment staging
//	lkagent guard --listen :8089                   # restarts failed agents; the server posts its webhooks there
//
// Run "lkagent help" for every command and "lkagent <command> --help" for
// its flags. Connection flags default to LIVEKIT_URL, LIVEKIT_API_KEY and
// LIVEKIT_API_SECRET.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/lkagent/lkagent/cmd/lkagent/internal/bench"
)

func main() {
	if bench.IsJobProcess() {
		// A job process of "lkagent bench --processes": it serves one job
		// and exits.
		bench.ServeJobProcess()
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	claimed := new(atomic.Bool) // the command handles the second signal itself
	ctx = withSignalClaim(ctx, claimed)
	sigs := make(chan os.Signal, 3)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		// The first signal stops the command cleanly: workers drain,
		// servers stop.
		cancel(&signalError{sig: s})
		<-sigs
		if claimed.Load() {
			// The worker cancels its jobs and sends their final
			// statuses; only a third signal does not wait for that.
			<-sigs
		}
		// The second one does not wait. Child processes die with us (the
		// local server is started so that the kernel kills it then).
		fmt.Fprintln(os.Stderr, "lkagent: second signal: exiting at once")
		os.Exit(exitInterrupted)
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}
