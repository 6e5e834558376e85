package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/livekit/protocol/livekit"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Tracing. Each job the worker runs is a span: SpanName, of the tracer
// TracerName, from the worker's TracerProvider (Options.TracerProvider,
// else OpenTelemetry's global one). docs/tracing.md lists its attributes
// and events.
const (
	// TracerName is the instrumentation scope of the worker's spans.
	TracerName = "github.com/lkagent/lkagent/worker"
	// SpanName is the name of a job's span.
	SpanName = "lkagent.job"
)

// The attributes of a job's span.
const (
	attrJobID      = attribute.Key("lkagent.job.id")
	attrDispatchID = attribute.Key("lkagent.dispatch.id")
	attrJobType    = attribute.Key("lkagent.job.type")
	attrAgentName  = attribute.Key("lkagent.agent.name")
	attrDeployment = attribute.Key("lkagent.deployment")
	attrIdentity   = attribute.Key("lkagent.agent.identity")
	attrWorkerID   = attribute.Key("lkagent.worker.id")
	attrExecutor   = attribute.Key("lkagent.executor")
	attrRoom       = attribute.Key("livekit.room")
	attrRoomSID    = attribute.Key("livekit.room.sid")
	attrResuming   = attribute.Key("lkagent.job.resuming")
	attrQueueWait  = attribute.Key("lkagent.queue.wait_s")
	attrOutcome    = attribute.Key("lkagent.job.outcome")
	attrCause      = attribute.Key("lkagent.job.cause")
)

// tracerProvider is Options.TracerProvider, else the global one.
func (w *Worker) tracerProvider() trace.TracerProvider {
	if w.o.TracerProvider != nil {
		return w.o.TracerProvider
	}
	return otel.GetTracerProvider()
}

// tracing holds the tracer of the jobs' spans, made at the first job: a
// tracer of the global provider made before the program set one forwards
// to the provider set later.
type tracing struct {
	once   sync.Once
	tracer trace.Tracer
}

func (w *Worker) tracer() trace.Tracer {
	w.tracing.once.Do(func() {
		w.tracing.tracer = w.tracerProvider().Tracer(TracerName, trace.WithInstrumentationVersion(Version))
	})
	return w.tracing.tracer
}

// startSpan starts the span of a job that is being launched, dated back
// to its offer, with the events of its start so far, and returns a.ctx
// carrying it. It runs on the job's goroutine, before the handler.
func (w *Worker) startSpan(a *activeJob) context.Context {
	info, t := a.info, a.params.Timing
	executor := w.exec.kind()
	launched := a.started
	if launched.IsZero() { // never launched: it left the queue now
		launched = time.Now()
	}
	start := t.OfferReceived
	if start.IsZero() {
		start = launched
	}
	ctx, span := w.tracer().Start(a.ctx, SpanName,
		trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindConsumer), trace.WithTimestamp(start))
	a.span = span
	if !span.IsRecording() {
		return ctx // not sampled, or no provider: nothing to build
	}
	span.SetAttributes(
		attrJobID.String(info.GetId()),
		attrDispatchID.String(info.GetDispatchId()),
		attrJobType.String(info.GetType().String()),
		attrAgentName.String(info.GetAgentName()),
		attrDeployment.String(info.GetDeployment()),
		attrIdentity.String(a.identity),
		attrWorkerID.String(a.line.sess.workerID()),
		attrExecutor.String(executor),
		attrRoom.String(info.GetRoom().GetName()),
		attrRoomSID.String(info.GetRoom().GetSid()),
	)
	event := func(name string, at time.Time, attrs ...attribute.KeyValue) {
		if !at.IsZero() {
			span.AddEvent(name, trace.WithTimestamp(at), trace.WithAttributes(attrs...))
		}
	}
	event("offer", t.OfferReceived)
	event("accept", t.Accepted)
	event("assignment", t.AssignmentReceived)
	if !a.queuedAt.IsZero() {
		event("queue_wait", a.queuedAt, attrQueueWait.Float64(launched.Sub(a.queuedAt).Seconds()))
	}
	event("launch", t.Launched)
	return ctx
}

// traceUnlaunched records the span of a queued job that failed before it
// started: it left the queue (QueueTimeout, a drain) and ends now.
func (w *Worker) traceUnlaunched(a *activeJob, outcome, failure string) {
	w.startSpan(a)
	a.endSpan(outcome, failure)
}

// traceJoined records that the job joined its room, at the instant at.
func (a *activeJob) traceJoined(at time.Time) {
	if a.span != nil && !at.IsZero() {
		a.span.AddEvent("join", trace.WithTimestamp(at))
	}
}

// traceStatus records what a job process's status says of the job's span:
// its join.
func (w *Worker) traceStatus(a *activeJob, u *livekit.UpdateJobStatus) {
	if us := u.GetJoinTiming().GetConnectedUs(); us > 0 && u.GetStatus() == livekit.JobStatus_JS_RUNNING {
		a.traceJoined(w.base.Add(time.Duration(us) * time.Microsecond))
	}
}

// endSpan ends a job's span: outcome is the jobs_finished status, failure
// the error reported to the server ("" when the job did not fail).
func (a *activeJob) endSpan(outcome, failure string) {
	span := a.span
	if span == nil {
		return
	}
	if !span.IsRecording() {
		span.End()
		return
	}
	attrs := []attribute.KeyValue{attrOutcome.String(outcome)}
	if cause := context.Cause(a.ctx); cause != nil && !errors.Is(cause, errJobEnded) {
		attrs = append(attrs, attrCause.String(cause.Error()))
	}
	span.AddEvent("end", trace.WithAttributes(attrs...))
	span.SetAttributes(attrs...)
	if failure != "" {
		span.SetStatus(codes.Error, failure)
	}
	span.End()
}

// traceHeaders are the W3C Trace Context headers of the span in ctx, for
// a job process to continue the trace; empty when there is none.
func traceHeaders(ctx context.Context) (traceparent, tracestate string) {
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c.Get("traceparent"), c.Get("tracestate")
}

// withRemoteSpan returns ctx carrying the span that traceparent and
// tracestate name, as the parent of the spans made with it.
func withRemoteSpan(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent, "tracestate": tracestate})
}

// flushTraces exports, before a job process exits, the spans its job
// made: it calls ForceFlush on the TracerProvider if that has one (the
// OpenTelemetry SDK's does), bounded by ShutdownTimeout.
func (w *Worker) flushTraces(log *slog.Logger) {
	f, ok := w.tracerProvider().(interface{ ForceFlush(context.Context) error })
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.o.ShutdownTimeout)
	defer cancel()
	if err := f.ForceFlush(ctx); err != nil {
		log.Warn("could not export the job's spans before the job process exits", slog.Any("error", err))
	}
}
