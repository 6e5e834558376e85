// Command procagent is a worker whose jobs misbehave on request, for the
// end-to-end tests of jobs run in processes of their own: a test runs it as
// a process against a real server and reads what it and its jobs did.
//
// What a job does is chosen by its dispatch's metadata. Every job first
// joins its room, then:
//
//	hold       stays until its context ends (the default)
//	hold:D     stays for the duration D, or until its context ends
//	ok         returns at once
//	mapwrites  writes one map from several goroutines: the runtime ends the
//	           process with "fatal error: concurrent map writes"
//	exit3      calls os.Exit(3)
//	alloc      allocates and touches memory until it is killed (it stops
//	           at 2 GiB and waits)
//	hang       waits for its context, then ignores its cancellation forever
//	listed     returns once the server lists the job in its dispatch (its
//	           launch complete: leaving the room would end the job then)
//	listed:E   the same, returning the error E
//
// A job that is to crash first waits until the server lists its agent as
// active (agentstate.Active): the crashes are of an agent in its call. A
// process that dies before that is removed from its room at once, and the
// server then records its job's end itself ("agent worker left the room")
// and drops the worker's report of the cause, which comes a few
// milliseconds later. A job prints one line once it is in its room,
// one when its context ends and one just before it crashes, with its
// process id:
//
//	job room=R identity=I job_id=J pid=P
//	cancelled room=R job_id=J cause=C pid=P
//	crash room=R job_id=J how=H pid=P
//
// and the worker prints "registered worker_id=W pid=P http=ADDR" once it is
// registered. Its log goes to stderr.
//
// With --processes, each job runs in a job process: this program started
// again with the same arguments. Everything main does before Run happens in
// every job process too, so it only parses flags and builds the worker.
// With --fail-job-processes, job processes exit before they serve: the
// environment variable that says so is given to job processes only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/agentstate"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// envFailStart, set in a job process's environment, makes it exit before
// it serves its job, as a binary whose job processes cannot start does.
const envFailStart = "PROCAGENT_FAIL_START"

func main() {
	if os.Getenv(envFailStart) != "" {
		fmt.Fprintln(os.Stderr, "procagent: this job process cannot start")
		os.Exit(1)
	}
	os.Exit(run())
}

func run() int {
	var o worker.Options
	var po worker.ProcessOptions
	flag.StringVar(&o.URL, "url", "", "LiveKit server URL (default $LIVEKIT_URL)")
	flag.StringVar(&o.APIKey, "api-key", "", "API key (default $LIVEKIT_API_KEY)")
	flag.StringVar(&o.APISecret, "api-secret", "", "API secret (default $LIVEKIT_API_SECRET)")
	flag.StringVar(&o.AgentName, "agent-name", "proc-bot", "agent name to register with")
	flag.StringVar(&o.Deployment, "deployment", "", "deployment to register with (default $LIVEKIT_AGENT_DEPLOYMENT)")
	flag.StringVar(&o.HTTPAddr, "http-addr", "127.0.0.1:0", "serve the worker's HTTP endpoints there (empty: off)")
	flag.IntVar(&o.MaxJobs, "max-jobs", 0, "jobs run at once at most (0: no cap)")
	flag.DurationVar(&o.DrainTimeout, "drain-timeout", time.Minute, "how long a stopping worker lets running jobs finish")
	flag.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 0, "how long cancelled jobs get to end (0: the default)")
	procs := flag.Bool("processes", false, "run each job in a process of its own")
	flag.IntVar(&po.Idle, "idle", 0, "with --processes: warm job processes kept ready (0: the default)")
	flag.Var((*byteSize)(&po.MemoryLimit), "memory-limit", "with --processes: kill a job process whose RSS passes it (bytes, or with KiB, MiB, GiB)")
	flag.Var((*byteSize)(&po.MemoryWarn), "memory-warn", "with --processes: warn about a job process whose RSS passes it")
	flag.DurationVar(&po.StartTimeout, "start-timeout", 0, "with --processes: how long a job process has to start (0: the default)")
	failStart := flag.Bool("fail-job-processes", false, "with --processes: job processes exit before they serve")
	debug := flag.Bool("debug", false, "log at debug level")
	flag.Parse()

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *procs {
		if *failStart {
			po.Env = append(po.Env, envFailStart+"=1")
		}
		o.Executor = worker.Processes(po)
	}
	var w *worker.Worker
	o.OnStateChange = func(c worker.StateChange) {
		if c.State == worker.StateRegistered {
			say("registered worker_id=%s pid=%d http=%s", c.WorkerID, os.Getpid(), w.HTTPAddr())
		}
	}
	w, err := worker.New(o, handle)
	if err != nil {
		fmt.Fprintln(os.Stderr, "procagent:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = w.Run(ctx)
	switch {
	case errors.Is(err, worker.ErrJobProcessDone): // a job process served its job
		return worker.ExitCode(err)
	case err != nil:
		fmt.Fprintln(os.Stderr, "procagent:", err)
		return 1
	}
	return 0
}

var out sync.Mutex

// say prints one line on stdout, whole. Job processes share the worker's
// stdout.
func say(format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func handle(ctx context.Context, j *job.Job) error {
	if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
		return err
	}
	pid := os.Getpid()
	say("job room=%s identity=%s job_id=%s pid=%d", j.RoomName(), j.Identity(), j.ID(), pid)
	crash := func(how string) {
		if err := agentstate.Active(ctx, j); err != nil {
			say("not active room=%s job_id=%s error=%q pid=%d", j.RoomName(), j.ID(), err, pid)
		}
		say("crash room=%s job_id=%s how=%s pid=%d", j.RoomName(), j.ID(), how, pid)
	}
	what, arg, _ := strings.Cut(j.Metadata(), ":")
	switch what {
	case "", "hold":
		var timeout <-chan time.Time
		if arg != "" {
			d, err := time.ParseDuration(arg)
			if err != nil {
				return fmt.Errorf("hold: %w", err)
			}
			timeout = time.After(d)
		}
		select {
		case <-ctx.Done():
		case <-timeout:
			return nil
		}
	case "ok":
		return nil
	case "listed":
		if err := agentstate.Listed(ctx, j); err != nil {
			return err
		}
		say("listed room=%s job_id=%s pid=%d", j.RoomName(), j.ID(), pid)
		if arg != "" {
			return errors.New(arg)
		}
		return nil
	case "mapwrites":
		crash(what)
		writeMapConcurrently()
	case "exit3":
		crash(what)
		os.Exit(3)
	case "alloc":
		crash(what)
		allocate(ctx)
	case "hang":
		<-ctx.Done()
		say("cancelled room=%s job_id=%s cause=%q pid=%d", j.RoomName(), j.ID(), context.Cause(ctx), pid)
		<-make(chan struct{}) // ignores its cancellation
	default:
		return fmt.Errorf("unknown behaviour %q in the dispatch's metadata", j.Metadata())
	}
	say("cancelled room=%s job_id=%s cause=%q pid=%d", j.RoomName(), j.ID(), context.Cause(ctx), pid)
	return nil
}

// writeMapConcurrently writes one map from several goroutines: the runtime
// stops the process with "fatal error: concurrent map writes", which no
// recover catches. The check is best effort, so the writes go on.
func writeMapConcurrently() {
	m := map[int]int{}
	for range 4 {
		go func() {
			for i := 0; ; i++ {
				m[i%128] = i
			}
		}()
	}
	time.Sleep(time.Minute)
	fmt.Fprintln(os.Stderr, "procagent: the map writes did not crash the process")
	os.Exit(4)
}

// allocate touches 16 MiB more every 20 ms, up to 2 GiB, then waits for
// the end of ctx (which a memory limit never lets come).
func allocate(ctx context.Context) {
	const chunk, most = 16 << 20, 2 << 30
	var keep [][]byte
	for n := 0; n < most; n += chunk {
		b := make([]byte, chunk)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
		time.Sleep(20 * time.Millisecond)
	}
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "procagent: allocated", len(keep)*chunk, "bytes and was not killed")
}

// byteSize is a flag of a number of bytes: "1048576", "256MiB", "2GiB".
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return errors.New("want a number of bytes, optionally with KiB, MiB or GiB")
	}
	*b = byteSize(n * mult)
	return nil
}
