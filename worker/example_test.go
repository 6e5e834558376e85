package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// A staging worker runs staging jobs and declines everything else. The
// fake server here stands in for LiveKit; against a real server only the
// URL and keys change.
func ExampleNew() {
	srv := workertest.NewServer(nil)
	defer srv.Close()

	w, err := worker.New(worker.Options{
		URL: srv.URL(), APIKey: "key", APISecret: "secret",
		AgentName:  "support-bot",
		Deployment: "staging",
		Logger:     slog.New(slog.DiscardHandler),
	}, func(ctx context.Context, j *job.Job) error {
		fmt.Printf("running %s job in %s\n", j.Deployment(), j.RoomName())
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	wait, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	conn, _ := srv.WaitWorker(wait)
	fmt.Printf("registered as %q, deployment %q\n", conn.Registration().GetAgentName(), conn.Registration().GetDeployment())

	staging := workertest.NewJob("support-bot", "staging")
	staging.Room.Name = "room-1"
	// The offer's answer is printed before the job is assigned: the
	// handler's line comes after it, whatever the goroutines' timing.
	res, _ := conn.Offer(wait, staging)
	fmt.Println("staging offer accepted:", res.GetAvailable())
	_ = conn.Assign(wait, staging, workertest.Token)
	st, _ := conn.WaitJobStatus(wait, staging.Id, livekit.JobStatus_JS_SUCCESS)
	fmt.Println("status:", st.GetStatus())

	prod := workertest.NewJob("support-bot", "")
	res, _ = conn.Offer(wait, prod)
	fmt.Println("production offer accepted:", res.GetAvailable())

	cancel()
	fmt.Println("Run:", <-done)
	// Output:
	// registered as "support-bot", deployment "staging"
	// staging offer accepted: true
	// running staging job in room-1
	// status: JS_SUCCESS
	// production offer accepted: false
	// Run: <nil>
}

// OnRequest decides each offer: here, blocked callers are rejected and the
// rest are accepted with an identity and attributes of the agent's choosing.
func ExampleOptions_onRequest() {
	srv := workertest.NewServer(nil)
	defer srv.Close()

	w, _ := worker.New(worker.Options{
		URL: srv.URL(), APIKey: "key", APISecret: "secret", AgentName: "support-bot",
		Logger: slog.New(slog.DiscardHandler),
		OnRequest: func(ctx context.Context, r *job.Request) error {
			if r.Metadata() == "blocked" {
				return r.Reject()
			}
			return r.Accept(job.AcceptOptions{
				Identity:   "support-" + r.RoomName(),
				Attributes: map[string]string{"tier": "gold"},
			})
		},
	}, func(ctx context.Context, j *job.Job) error { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx) }()

	wait, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	conn, _ := srv.WaitWorker(wait)
	for _, md := range []string{"blocked", "vip"} {
		j := workertest.NewJob("support-bot", "")
		j.Metadata, j.Room.Name = md, "room-"+md
		res, _ := conn.Offer(wait, j)
		fmt.Printf("%s: available=%v identity=%q tier=%q\n", md, res.GetAvailable(),
			res.GetParticipantIdentity(), res.GetParticipantAttributes()["tier"])
	}
	// Output:
	// blocked: available=false identity="" tier=""
	// vip: available=true identity="support-room-vip" tier="gold"
}

// Drain stops a worker from taking jobs and waits for the running ones,
// while it stays connected: for programs that manage their own lifetime.
func ExampleWorker_Drain() {
	srv := workertest.NewServer(nil)
	defer srv.Close()

	release := make(chan struct{})
	w, _ := worker.New(worker.Options{
		URL: srv.URL(), APIKey: "key", APISecret: "secret", AgentName: "support-bot",
		Logger: slog.New(slog.DiscardHandler),
	}, func(ctx context.Context, j *job.Job) error {
		<-release // a call in progress
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx) }()

	wait, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	conn, _ := srv.WaitWorker(wait)
	running := workertest.NewJob("support-bot", "")
	_, _ = conn.Dispatch(wait, running)
	_, _ = conn.WaitJobStatus(wait, running.Id, livekit.JobStatus_JS_RUNNING)

	drained := make(chan error, 1)
	go func() { drained <- w.Drain(wait) }()
	st, _ := conn.WaitWorkerStatus(wait, func(s *livekit.UpdateWorkerStatus) bool { return s.GetDraining() })
	fmt.Println("draining:", st.GetDraining(), st.GetStatus())
	res, _ := conn.Offer(wait, workertest.NewJob("support-bot", ""))
	fmt.Println("new offer accepted:", res.GetAvailable())

	close(release)
	fmt.Println("Drain:", <-drained)
	fmt.Println("registered:", w.Snapshot().Registered)
	// Output:
	// draining: true WS_FULL
	// new offer accepted: false
	// Drain: <nil>
	// registered: true
}

// Start returns once the worker is registered, so a program (or a test)
// can dispatch right after it; Stop drains it.
func ExampleWorker_Start() {
	srv := workertest.NewServer(nil)
	defer srv.Close()

	w, err := worker.New(worker.Options{
		URL: srv.URL(), APIKey: "key", APISecret: "secret", AgentName: "support-bot",
		Logger: slog.New(slog.DiscardHandler),
	}, func(ctx context.Context, j *job.Job) error { return nil })
	if err != nil {
		fmt.Println(err)
		return
	}
	wait, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := w.Start(wait); err != nil {
		fmt.Println("Start:", err)
		return
	}
	fmt.Println("registered:", w.Snapshot().Registered)

	conn, _ := srv.WaitWorker(wait)
	j := workertest.NewJob("support-bot", "")
	_, _ = conn.Dispatch(wait, j)
	st, _ := conn.WaitJobStatus(wait, j.Id, livekit.JobStatus_JS_SUCCESS)
	fmt.Println("job:", st.GetStatus())

	fmt.Println("Stop:", w.Stop(wait))
	<-w.Done()
	fmt.Println("Err:", w.Err())
	// Output:
	// registered: true
	// job: JS_SUCCESS
	// Stop: <nil>
	// Err: <nil>
}

// With job processes, the program is the same: main builds the worker
// and runs it. Started as a job process, the same main builds the same
// worker, and RunUntilSignal (or Run, or Start) serves the one job it is
// handed, then returns ErrJobProcessDone: main exits the process, with
// the code ExitCode gives, and has nothing to print. Keep what comes
// before it to building the worker. A job
// that crashes its process (a fatal runtime error, os.Exit, a crash in C
// code, MemoryLimit) fails alone. (Not run here: it starts processes.)
func ExampleProcesses() {
	w, err := worker.New(worker.Options{
		AgentName: "support-bot", // URL, key and secret from LIVEKIT_URL, …
		Executor: worker.Processes(worker.ProcessOptions{
			Idle:        2,         // warm processes kept ready
			MemoryWarn:  384 << 20, // bytes of RSS
			MemoryLimit: 512 << 20,
		}),
	}, func(ctx context.Context, j *job.Job) error {
		if _, err := j.Connect(ctx, nil); err != nil {
			return err
		}
		<-ctx.Done() // the call; returning leaves the room
		return nil
	})
	if err != nil {
		fmt.Println(err) // says which option is wrong and how to fix it
		os.Exit(worker.ExitCode(err))
	}
	err = w.RunUntilSignal(context.Background())
	if err != nil && !errors.Is(err, worker.ErrJobProcessDone) {
		fmt.Println(err) // a job process served its job: nothing to say
	}
	os.Exit(worker.ExitCode(err))
}
