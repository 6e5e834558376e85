package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
)

// ErrPrewarm is wrapped by the error of a prewarm hook that failed (see
// [Options.Prewarm]).
var ErrPrewarm = errors.New("worker: prewarm failed")

// Prewarm is a hook that makes, once per process and before the process
// takes jobs, a value that every job of the process uses: models loaded
// into memory, a client with its connections open, parsed configuration.
// Create it with [NewPrewarm], set it as [Options.Prewarm], and read its
// value in a job with [Prewarm.Value]:
//
//	models := worker.NewPrewarm(func(ctx context.Context) (*Models, error) {
//		return loadModels(ctx)
//	})
//	w, err := worker.New(worker.Options{AgentName: "bot", Prewarm: models},
//		func(ctx context.Context, j *job.Job) error {
//			m, _ := models.Value(ctx)
//			…
//		})
//
// Where it runs depends on the executor. With [InProcess] it runs in the
// worker's process when [Worker.Start] or [Worker.Run] is first called,
// before the worker registers: the server offers no job before it is done,
// and a failure fails Start or Run. With [Processes] it runs in each job
// process, before the process reports ready (so its time counts against
// ProcessOptions.StartTimeout, and a warm process has it done before its
// job comes); the worker's own process never runs it. A job process whose
// hook fails exits and counts as a start that failed: starts failing in a
// row make the worker report itself full and /readyz say why.
//
// A Prewarm is a typed key as well as a hook: its value can be read only
// through it, with its type.
type Prewarm[T any] struct {
	fn func(ctx context.Context) (T, error)
}

// NewPrewarm returns the prewarm hook fn, for [Options.Prewarm]. fn gets
// the context given to Start or Run; its error (or panic) fails the
// prewarm.
func NewPrewarm[T any](fn func(ctx context.Context) (T, error)) *Prewarm[T] {
	return &Prewarm[T]{fn: fn}
}

// prewarmKey is the context key of p's value.
type prewarmKey struct{ p any }

// Value returns the value p made in this process, read from ctx: a job's
// context, or any context derived from it. ok is false when ctx carries
// no value of p (p is not the worker's Prewarm, or ctx is not a job's).
func (p *Prewarm[T]) Value(ctx context.Context) (v T, ok bool) {
	v, ok = ctx.Value(prewarmKey{p}).(T)
	return v, ok
}

// WithValue returns a copy of ctx that carries v as p's value: what a job's
// context carries. A test that runs a handler without a worker (package
// jobtest) gives it a value this way:
//
//	res := jobtest.New(jobtest.Options{}).Run(func(ctx context.Context, j *job.Job) error {
//		return handle(models.WithValue(ctx, testModels), j)
//	})
func (p *Prewarm[T]) WithValue(ctx context.Context, v T) context.Context {
	return context.WithValue(ctx, prewarmKey{p}, v)
}

// run runs the hook and returns what puts its value into a job's context.
func (p *Prewarm[T]) run(ctx context.Context) (apply func(context.Context) context.Context, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("prewarm panicked: %v\n%s", v, debug.Stack())
		}
	}()
	v, err := p.fn(ctx)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) context.Context { return p.WithValue(ctx, v) }, nil
}

// Prewarmer is the type of [Options.Prewarm]: a [*Prewarm] of any value
// type, made by [NewPrewarm].
type Prewarmer interface {
	run(ctx context.Context) (func(context.Context) context.Context, error)
}

// warmState is what this process's prewarm made: it runs once per process,
// and once more only after it failed.
type warmState struct {
	mu    sync.Mutex
	apply func(context.Context) context.Context // nil until it ran
}

// prewarm runs Options.Prewarm unless it already ran in this process.
func (w *Worker) prewarm(ctx context.Context) error {
	if w.o.Prewarm == nil {
		return nil
	}
	w.warm.mu.Lock()
	defer w.warm.mu.Unlock()
	if w.warm.apply != nil {
		return nil
	}
	start := time.Now()
	apply, err := w.o.Prewarm.run(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPrewarm, err)
	}
	w.warm.apply = apply
	w.log.Info("prewarmed", slog.Duration("took", time.Since(start)))
	return nil
}

// withPrewarmed returns ctx carrying the prewarmed value, if any.
func (w *Worker) withPrewarmed(ctx context.Context) context.Context {
	w.warm.mu.Lock()
	apply := w.warm.apply
	w.warm.mu.Unlock()
	if apply == nil {
		return ctx
	}
	return apply(ctx)
}
