package worker

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// loadEvery is how often Options.LoadFunc is sampled, besides after every
// job start and end (at most every loadGap).
const (
	loadEvery = 500 * time.Millisecond
	loadGap   = 50 * time.Millisecond
)

// loadSampler calls Options.LoadFunc on a goroutine of its own and keeps
// the last value, so that the worker's loops never run user code: a slow
// or stuck LoadFunc delays only its own samples, and /healthz says so.
type loadSampler struct {
	fn    func() float64
	bits  atomic.Uint64 // math.Float64bits of the last sample
	since atomic.Int64  // unix nanos when the call in progress started, 0 when none
	kick  chan struct{}
}

func newLoadSampler(fn func() float64) *loadSampler {
	if fn == nil {
		return nil
	}
	return &loadSampler{fn: fn, kick: make(chan struct{}, 1)}
}

// load returns the last sample, clamped to [0, 1].
func (l *loadSampler) load() float64 { return math.Float64frombits(l.bits.Load()) }

// stuckFor says how long the call in progress has run, or 0.
func (l *loadSampler) stuckFor() time.Duration {
	if t := l.since.Load(); t != 0 {
		return time.Since(time.Unix(0, t))
	}
	return 0
}

// run samples until ctx ends; onChange is called after a sample that
// changed the value.
func (l *loadSampler) run(ctx context.Context, log *slog.Logger, onChange func()) {
	t := time.NewTicker(loadEvery)
	defer t.Stop()
	var last time.Time
	for {
		if wait := loadGap - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		old := l.bits.Load()
		if v, err := l.sample(); err != nil {
			log.Error("LoadFunc failed; keeping its last value", slog.Any("error", err))
		} else {
			l.bits.Store(math.Float64bits(min(max(v, 0), 1)))
		}
		if l.bits.Load() != old {
			onChange()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.kick:
		}
	}
}

func (l *loadSampler) sample() (v float64, err error) {
	l.since.Store(time.Now().UnixNano())
	defer l.since.Store(0)
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("LoadFunc panicked: %v\n%s", p, debug.Stack())
		}
	}()
	v = l.fn()
	if math.IsNaN(v) {
		return 0, fmt.Errorf("LoadFunc returned NaN")
	}
	return v, nil
}

// userLoad returns the last sample of Options.LoadFunc; false without one.
func (w *Worker) userLoad() (float64, bool) {
	if w.loads == nil {
		return 0, false
	}
	return w.loads.load(), true
}

// kickLoad asks for a fresh LoadFunc sample (after a job started or ended).
func (w *Worker) kickLoad() {
	if w.loads == nil {
		return
	}
	select {
	case w.loads.kick <- struct{}{}:
	default:
	}
}
