package workertest_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// startWorker runs a worker of agentName and deployment against srv until
// the returned stop function is called; stop returns what Run returned.
func startWorker(srv *workertest.Server, agentName, deployment string, h job.Handler) (stop func() error) {
	w, err := worker.New(worker.Options{
		URL:        srv.URL(),
		APIKey:     "key",
		APISecret:  "secret",
		AgentName:  agentName,
		Deployment: deployment,
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond,
		Logger:     slog.New(slog.DiscardHandler),
	}, h)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	return func() error {
		cancel()
		return <-done
	}
}

// A worker registers with the fake server, which dispatches a job to it
// and waits for the job's outcome.
func Example() {
	srv := workertest.NewServer(nil) // in a test: workertest.NewServer(t)
	defer srv.Close()
	stop := startWorker(srv, "support-bot", "staging", func(ctx context.Context, j *job.Job) error {
		return nil // the job's work
	})
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := srv.WaitWorker(ctx)
	if err != nil {
		panic(err)
	}
	reg := conn.Registration()
	fmt.Printf("registered: agent %s, deployment %s\n", reg.GetAgentName(), reg.GetDeployment())

	j := workertest.NewJob("support-bot", "staging")
	res, err := conn.Dispatch(ctx, j)
	if err != nil {
		panic(err)
	}
	fmt.Println("accepted:", res.GetAvailable())
	if _, err := conn.WaitJobStatus(ctx, j.GetId(), livekit.JobStatus_JS_SUCCESS); err != nil {
		panic(err)
	}
	for _, u := range conn.JobStatuses() {
		fmt.Println("status:", u.GetStatus())
	}
	// Output:
	// registered: agent support-bot, deployment staging
	// accepted: true
	// status: JS_RUNNING
	// status: JS_SUCCESS
}

// A worker declines offers that are not of its own deployment.
func ExampleConn_Offer() {
	srv := workertest.NewServer(nil)
	defer srv.Close()
	stop := startWorker(srv, "support-bot", "staging", func(context.Context, *job.Job) error { return nil })
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := srv.WaitWorker(ctx)
	if err != nil {
		panic(err)
	}
	for _, deployment := range []string{"staging", "", "canary"} {
		res, err := conn.Offer(ctx, workertest.NewJob("support-bot", deployment))
		if err != nil {
			panic(err)
		}
		fmt.Printf("offer for deployment %q: available %v\n", deployment, res.GetAvailable())
	}
	// Output:
	// offer for deployment "staging": available true
	// offer for deployment "": available false
	// offer for deployment "canary": available false
}

// A dropped connection: the worker registers again with the same instance
// id, and its running job goes on. As on LiveKit's server, the job belonged
// to the old connection: the worker names it in a MigrateJob request on the
// new one, and does not send its end there (the server would drop it as a
// status of an unknown job).
func ExampleConn_Drop() {
	srv := workertest.NewServer(nil)
	defer srv.Close()
	release := make(chan struct{})
	ended := make(chan struct{})
	stop := startWorker(srv, "support-bot", "", func(ctx context.Context, j *job.Job) error {
		defer close(ended)
		<-release
		return nil
	})
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := srv.WaitWorker(ctx)
	if err != nil {
		panic(err)
	}
	j := workertest.NewJob("support-bot", "")
	if _, err := first.Dispatch(ctx, j); err != nil {
		panic(err)
	}
	if _, err := first.WaitJobStatus(ctx, j.GetId(), livekit.JobStatus_JS_RUNNING); err != nil {
		panic(err)
	}

	first.Drop()
	second, err := srv.WaitWorker(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("same instance:", second.Registration().GetInstanceId() == first.Registration().GetInstanceId())
	for len(second.Migrations()) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("migration requested for the running job:", second.Migrations()[0][0] == j.GetId())
	close(release)
	<-ended
	fmt.Println("job ended; statuses sent for it on the new connection:", len(second.JobStatuses())+len(second.UnknownStatuses()))
	// Output:
	// same instance: true
	// migration requested for the running job: true
	// job ended; statuses sent for it on the new connection: 0
}

// A server that rejects the worker's API key and secret makes Run fail at
// once with worker.ErrUnauthorized.
func ExampleOptions_rejectAuth() {
	srv := workertest.NewServerWithOptions(nil, workertest.Options{RejectAuth: true})
	defer srv.Close()
	w, err := worker.New(worker.Options{
		URL: srv.URL(), APIKey: "key", APISecret: "wrong", AgentName: "support-bot",
		Logger: slog.New(slog.DiscardHandler),
	}, func(context.Context, *job.Job) error { return nil })
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = w.Run(ctx)
	fmt.Println("unauthorized:", errors.Is(err, worker.ErrUnauthorized))
	fmt.Println("attempts:", srv.Attempts())
	// Output:
	// unauthorized: true
	// attempts: 1
}

// A worker that stops drains and then closes its connection with a normal
// close frame.
func ExampleConn_CloseCode() {
	srv := workertest.NewServer(nil)
	defer srv.Close()
	stop := startWorker(srv, "support-bot", "", func(context.Context, *job.Job) error { return nil })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := srv.WaitWorker(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("Run returned:", stop())
	<-conn.Done()
	fmt.Println("close code:", conn.CloseCode())
	// Output:
	// Run returned: <nil>
	// close code: 1000
}
