// Command otel runs the echo agent with its jobs traced by OpenTelemetry,
// configured by the standard OTEL_* variables and exported over OTLP/HTTP:
//
//	export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
//	export OTEL_SERVICE_NAME=echo OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318
//	go run ./examples/otel --agent-name echo [--processes]
//
// Each job is a span, lkagent.job, made by the worker (see docs/tracing.md);
// the handler's own span, echo.session, is its child. The program sets the
// global TracerProvider first thing in main, so that job processes
// (--processes), which run main too, have one of their own: the worker
// continues the job's trace there and flushes the provider before the
// process exits.
//
// Variables read (by the OpenTelemetry SDK and exporter): OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), OTEL_EXPORTER_OTLP_HEADERS,
// OTEL_TRACES_SAMPLER, OTEL_BSP_SCHEDULE_DELAY; OTEL_TRACES_EXPORTER=none
// turns the export off.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

func main() {
	agentName := flag.String("agent-name", "echo", "agent name the worker registers with")
	deployment := flag.String("deployment", "", "deployment to register with (default $LIVEKIT_AGENT_DEPLOYMENT; empty is production)")
	processes := flag.Bool("processes", false, "run each job in a process of its own")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	tp, err := newTracerProvider(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "otel:", err)
		os.Exit(2)
	}
	otel.SetTracerProvider(tp) // here in job processes too: main runs there up to Run

	o := worker.Options{AgentName: *agentName, Deployment: *deployment, OnRequest: echoagent.OnRequest, Logger: log}
	if *processes {
		o.Executor = worker.Processes(worker.ProcessOptions{})
	}
	w, err := worker.New(o, handle)
	if err != nil {
		fmt.Fprintln(os.Stderr, "otel:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal now kills the process
	}()
	err = w.Run(ctx)
	// The worker's process exports its last spans (the jobs' own) before
	// it exits.
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if serr := tp.Shutdown(sctx); serr != nil {
		log.Warn("could not export the last spans", slog.Any("error", serr))
	}
	switch {
	case errors.Is(err, worker.ErrJobProcessDone):
		// This was a job process (-processes): it served its job.
		os.Exit(worker.ExitCode(err))
	case err != nil:
		fmt.Fprintln(os.Stderr, "otel:", err)
		os.Exit(1)
	}
	log.Info("agent stopped")
}

// newTracerProvider is an SDK TracerProvider configured by the OTEL_*
// variables: the resource from OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES, the sampler from OTEL_TRACES_SAMPLER, the
// batching from OTEL_BSP_*, the OTLP/HTTP exporter from
// OTEL_EXPORTER_OTLP_*; none with OTEL_TRACES_EXPORTER=none.
func newTracerProvider(ctx context.Context) (*sdktrace.TracerProvider, error) {
	res, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if os.Getenv("OTEL_TRACES_EXPORTER") != "none" {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("OTLP exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	return sdktrace.NewTracerProvider(opts...), nil
}

// handle runs the echo agent inside a span of its own: ctx carries the
// job's span, so echo.session is its child.
func handle(ctx context.Context, j *job.Job) error {
	ctx, span := otel.Tracer("github.com/lkagent/lkagent/examples/otel").Start(ctx, "echo.session", trace.WithAttributes(attribute.String("echo.identity", j.Identity())))
	defer span.End()
	err := echoagent.Handle(ctx, j)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}
