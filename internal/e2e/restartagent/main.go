// Command restartagent is a worker whose jobs fail on request, for the
// end-to-end tests of restarts: a test runs it as a process, kills it, and
// reads what its jobs did on stdout.
//
// What a job does is chosen by its dispatch's metadata, "WHEN[:HOW]":
//
//	hold        join the room and stay until the job ends (the default)
//	leave       join the room and leave normally after a moment
//	crash       join the room, then crash
//	crash-once  crash in the first job of a dispatch chain, hold in its
//	            restarts (those carry the guard.AttrRestarts attribute)
//	crash-alone hold while someone other than agents is in the room, then
//	            crash
//
// HOW is "exit" (os.Exit(3), the default) or "map" (concurrent map writes,
// a fatal runtime error no recover catches). Either ends the job's process
// with --processes, and the whole worker without. A third part,
// "WHEN:HOW:DELAY" (a duration), holds the room that long before crashing.
//
// Each job prints one line when it is in its room and one just before it
// crashes, with the time (Unix nanoseconds) and its process id:
//
//	job room=R identity=I job_id=J restarts=N pid=P at=T
//	crash room=R identity=I how=exit pid=P at=T
//
// and the worker prints "registered worker_id=W pid=P" once registered.
// Its log goes to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/guard"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

func main() {
	os.Exit(run())
}

func run() int {
	var o worker.Options
	flag.StringVar(&o.URL, "url", "", "LiveKit server URL (default $LIVEKIT_URL)")
	flag.StringVar(&o.APIKey, "api-key", "", "API key (default $LIVEKIT_API_KEY)")
	flag.StringVar(&o.APISecret, "api-secret", "", "API secret (default $LIVEKIT_API_SECRET)")
	flag.StringVar(&o.AgentName, "agent-name", "restart-bot", "agent name to register with")
	flag.StringVar(&o.Deployment, "deployment", "", "deployment to register with (default $LIVEKIT_AGENT_DEPLOYMENT)")
	flag.StringVar(&o.HTTPAddr, "http-addr", "", "serve the worker's HTTP endpoints there")
	flag.BoolVar(&o.Webhook, "webhook", false, "serve POST /webhook on the HTTP endpoints")
	flag.DurationVar(&o.DrainTimeout, "drain-timeout", time.Second, "how long a stopping worker lets jobs run")
	flag.IntVar(&o.Restart.MaxRestarts, "max-restarts", 0, "restarts of one room, agent and deployment per window (0: the default)")
	flag.DurationVar(&o.Restart.Backoff, "restart-backoff", 0, "least time between two restarts (0: the default)")
	flag.BoolVar(&o.Restart.Disabled, "no-restart", false, "never restart failed jobs' agents")
	procs := flag.Bool("processes", false, "run each job in a process of its own")
	flag.Parse()

	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if *procs {
		o.Executor = worker.Processes(worker.ProcessOptions{})
	}
	o.OnStateChange = func(c worker.StateChange) {
		if c.State == worker.StateRegistered {
			say("registered worker_id=%s pid=%d", c.WorkerID, os.Getpid())
		}
	}
	w, err := worker.New(o, handle)
	if err != nil {
		fmt.Fprintln(os.Stderr, "restartagent:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = w.Run(ctx)
	switch {
	case errors.Is(err, worker.ErrJobProcessDone): // a job process served its job
		return worker.ExitCode(err)
	case err != nil:
		fmt.Fprintln(os.Stderr, "restartagent:", err)
		return 1
	}
	return 0
}

var out sync.Mutex

// say prints one line on stdout, whole.
func say(format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func handle(ctx context.Context, j *job.Job) error {
	room, err := j.Connect(ctx, lksdk.NewRoomCallback())
	if err != nil {
		return err
	}
	restarts := j.Info().GetAttributes()[guard.AttrRestarts]
	say("job room=%s identity=%s job_id=%s restarts=%s pid=%d at=%d",
		j.RoomName(), j.Identity(), j.ID(), restarts, os.Getpid(), time.Now().UnixNano())

	when, how, _ := strings.Cut(j.Metadata(), ":")
	how, delay, _ := strings.Cut(how, ":")
	crashNow := func() {
		if d, err := time.ParseDuration(delay); err == nil {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return
			}
		}
		say("crash room=%s identity=%s how=%s pid=%d at=%d", j.RoomName(), j.Identity(), how, os.Getpid(), time.Now().UnixNano())
		crash(how)
	}
	switch when {
	case "", "hold":
	case "leave":
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil
	case "crash":
		crashNow()
	case "crash-once":
		if restarts == "" {
			crashNow()
		}
	case "crash-alone":
		for callers(room) > 0 {
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return nil
			}
		}
		crashNow()
	default:
		return fmt.Errorf("unknown behaviour %q in the dispatch's metadata", j.Metadata())
	}
	<-ctx.Done()
	return nil
}

// callers counts the room's participants that are not agents.
func callers(room *lksdk.Room) int {
	n := 0
	for _, p := range room.GetRemoteParticipants() {
		if p.Kind() != lksdk.ParticipantAgent {
			n++
		}
	}
	return n
}

// crash ends the process the way a broken agent does.
func crash(how string) {
	switch how {
	case "map":
		// Unsynchronised writes to one map: the runtime stops the process
		// with "fatal error: concurrent map writes", which no recover
		// catches. The check is best effort, so keep writing.
		m := map[int]int{}
		for range 4 {
			go func() {
				for i := 0; ; i++ {
					m[i%128] = i
				}
			}()
		}
		time.Sleep(30 * time.Second)
		fmt.Fprintln(os.Stderr, "restartagent: the map writes did not crash the process")
		os.Exit(4)
	default:
		os.Exit(3)
	}
}
