package jobrt

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

// ParticipantOption narrows the participants [Job.WaitForParticipant] and
// [Job.OnParticipant] match. Without options they match every remote
// participant that is not an agent.
type ParticipantOption struct{ apply func(*participantFilter) }

// WithIdentity matches the participant of that identity only, whatever
// its kind (unless [WithKind] narrows it too).
func WithIdentity(identity string) ParticipantOption {
	return ParticipantOption{func(f *participantFilter) {
		f.identity, f.byIdentity = identity, true
	}}
}

// WithKind matches participants of the given kinds only (agents among
// them if asked for). Several WithKind options add up.
func WithKind(kinds ...livekit.ParticipantInfo_Kind) ParticipantOption {
	return ParticipantOption{func(f *participantFilter) {
		f.kinds = append(f.kinds, kinds...)
		f.byKind = true
	}}
}

// participantFilter is what a set of options matches.
type participantFilter struct {
	identity   string
	byIdentity bool
	kinds      []livekit.ParticipantInfo_Kind
	byKind     bool
}

func newFilter(opts []ParticipantOption) participantFilter {
	var f participantFilter
	for _, o := range opts {
		if o.apply != nil {
			o.apply(&f)
		}
	}
	return f
}

func (f participantFilter) match(p *lksdk.RemoteParticipant) bool {
	if f.byIdentity && p.Identity() != f.identity {
		return false
	}
	kind := livekit.ParticipantInfo_Kind(p.Kind())
	switch {
	case f.byKind:
		return slices.Contains(f.kinds, kind)
	case f.byIdentity:
		return true
	default:
		return kind != livekit.ParticipantInfo_AGENT
	}
}

// String describes the participants f matches, for errors.
func (f participantFilter) String() string {
	var parts []string
	if f.byIdentity {
		parts = append(parts, fmt.Sprintf("identity %q", f.identity))
	}
	if f.byKind {
		names := make([]string, len(f.kinds))
		for i, k := range f.kinds {
			names[i] = k.String()
		}
		parts = append(parts, "kind "+strings.Join(names, " or "))
	}
	if len(parts) == 0 {
		return "participant that is not an agent"
	}
	return "participant of " + strings.Join(parts, " and ")
}

// watchers wake the participant helpers when the room's participants may
// have changed. Waking never blocks: each watcher has a channel with room
// for one wake-up, and one pending wake-up is as good as many, because a
// woken watcher reads the room's current participants again.
type watchers struct {
	mu  sync.Mutex
	set map[chan struct{}]struct{}
}

// watch registers a watcher; stop unregisters it.
func (w *watchers) watch() (wake <-chan struct{}, stop func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	if w.set == nil {
		w.set = make(map[chan struct{}]struct{})
	}
	w.set[ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.set, ch)
		w.mu.Unlock()
	}
}

// wake wakes every watcher, without blocking.
func (w *watchers) wake() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.set {
		select {
		case ch <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// WaitForParticipant returns the first remote participant of the job's
// room that opts match (by default: any participant that is not an agent),
// whether it joined before the call or joins later. It needs the room:
// before [Job.Connect] joined it, it returns ErrNotConnected at once. It
// returns an error when ctx ends (wrapping ctx's error) or when the job
// ends (wrapping the job context's error and cause).
func (j *Job) WaitForParticipant(ctx context.Context, opts ...ParticipantOption) (*lksdk.RemoteParticipant, error) {
	f := newFilter(opts)
	room := j.Room()
	if room == nil {
		return nil, fmt.Errorf("job: wait for a %s: %w", f, ErrNotConnected)
	}
	// Listen first, then look: a participant who joins after the look
	// wakes the loop.
	wake, stop := j.watchers.watch()
	defer stop()
	for {
		switch {
		case ctx.Err() != nil:
			return nil, fmt.Errorf("job: no %s joined: %w", f, ctxError(ctx))
		case j.ctx.Err() != nil:
			return nil, fmt.Errorf("job: no %s joined before the job ended: %w", f, ctxError(j.ctx))
		}
		for _, p := range room.GetRemoteParticipants() {
			if f.match(p) {
				return p, nil
			}
		}
		select {
		case <-wake:
		case <-ctx.Done():
		case <-j.ctx.Done():
		}
	}
}

// ctxError is ctx's error, wrapping its cause too when that differs.
func ctxError(ctx context.Context) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if cause == nil || cause == err {
		return err
	}
	return fmt.Errorf("%w: %w", err, cause)
}

// OnParticipant runs fn, on a goroutine of its own (started with
// [Job.Go]), for each remote participant that opts match (by default: any
// participant that is not an agent), in the room or joining later; once
// per participant session (one who leaves and joins again is served
// again). fn's context ends when that participant leaves the room (its
// cause is then ErrParticipantLeft) or when the job ends. A panic in fn
// fails the job.
//
// Called before [Job.Connect], OnParticipant takes effect when Connect
// has joined the room; called after the job ended, it does nothing.
func (j *Job) OnParticipant(fn func(ctx context.Context, p *lksdk.RemoteParticipant), opts ...ParticipantOption) {
	f := newFilter(opts)
	start := func(room *lksdk.Room) {
		j.goNamed("participant watcher", func(ctx context.Context) error {
			j.serveParticipants(ctx, room, f, fn)
			return nil
		})
	}
	j.mu.Lock()
	room, ended := j.room, j.ended
	if room == nil && !ended {
		j.pending = append(j.pending, start)
	}
	j.mu.Unlock()
	if room != nil && !ended {
		start(room)
	}
}

// serveParticipants starts fn for each participant f matches and cancels
// its context when it left, until ctx ends.
func (j *Job) serveParticipants(ctx context.Context, room *lksdk.Room, f participantFilter,
	fn func(context.Context, *lksdk.RemoteParticipant)) {
	wake, stop := j.watchers.watch()
	defer stop()
	// A participant is known by its *RemoteParticipant: the SDK makes a
	// new one when an identity joins again.
	served := make(map[*lksdk.RemoteParticipant]context.CancelCauseFunc)
	for {
		present := make(map[*lksdk.RemoteParticipant]bool)
		for _, p := range room.GetRemoteParticipants() {
			if !f.match(p) {
				continue
			}
			present[p] = true
			if _, ok := served[p]; ok {
				continue
			}
			pctx, cancel := context.WithCancelCause(ctx)
			served[p] = cancel
			j.goNamed("participant entrypoint", func(context.Context) error {
				defer cancel(nil)
				fn(pctx, p)
				return nil
			})
		}
		for p, cancel := range served {
			if !present[p] {
				cancel(ErrParticipantLeft)
				delete(served, p)
			}
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return // the participants' contexts, derived from ctx, are done too
		}
	}
}
