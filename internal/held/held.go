// Package held finds and serves held dispatches: dispatches the LiveKit
// server dropped because no worker of their agent name and deployment took
// their job (none was registered, or every one declined or missed it). The
// server never launches such a job again; a [Sweeper] lists the rooms and
// their dispatches, and replaces each held one by an identical new dispatch,
// which the server offers to the workers registered now.
//
// A dispatch is held when the server lists no job for it [Config.HeldAfter]
// after it was created: the server lists a job once a worker accepted it,
// within a second usually, a few seconds when it refreshes its cache of
// agent names or works through a burst. A held dispatch is claimed by
// deleting it (of concurrent deletes of one dispatch, exactly one succeeds,
// so any number of sweepers serve it once), then re-created with the same
// room, agent name, deployment, metadata, attributes, restart policy and
// thread. A dispatch deleted meanwhile fails the claim and is left alone;
// a room that is gone is not listed, and the claim of a dispatch proves its
// room was there.
//
// Cost on the server, per sweep: one ListRooms, one ListDispatch per room,
// and two calls (delete, create) per dispatch served. A [Lease] lets a fleet of sweepers of one agent name and
// deployment do about one sweep per interval between them: see
// docs/dispatch.md.
package held

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/livekit/protocol/livekit"
	"golang.org/x/sync/errgroup"
)

// ErrGone is what API.DeleteDispatch returns for a dispatch (or room) that
// no longer exists.
var ErrGone = errors.New("held: the dispatch no longer exists")

// API is what a Sweeper needs of the server.
type API interface {
	// ListRooms lists the rooms, or only those named.
	ListRooms(ctx context.Context, names ...string) ([]*livekit.Room, error)
	// ListDispatches lists the dispatches of a room; none if it is gone.
	ListDispatches(ctx context.Context, room string) ([]*livekit.AgentDispatch, error)
	// DeleteDispatch deletes a dispatch; ErrGone if it did not exist. On
	// the server this is atomic: of concurrent deletes of one dispatch,
	// exactly one succeeds.
	DeleteDispatch(ctx context.Context, room, id string) error
	CreateDispatch(ctx context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error)
}

// Key is whose dispatches a sweep serves: an agent name and a deployment
// ("" is production).
type Key struct{ AgentName, Deployment string }

// Verdict is what a sweep makes of one dispatch.
type Verdict int

const (
	// NotMine: another agent name or deployment than the sweep serves.
	NotMine Verdict = iota
	// Served: the server lists a job for it.
	Served
	// Pending: no job listed yet, but younger than HeldAfter: the server
	// may still be placing it.
	Pending
	// Held: no job listed HeldAfter after its creation: dropped.
	Held
)

func (v Verdict) String() string {
	switch v {
	case NotMine:
		return "not_mine"
	case Served:
		return "served"
	case Pending:
		return "pending"
	case Held:
		return "held"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// Classify says what d is, at now, to a sweep of the keys mine accepts
// (nil accepts every key).
func Classify(d *livekit.AgentDispatch, now time.Time, heldAfter time.Duration, mine func(Key) bool) Verdict {
	if mine != nil && !mine(KeyOf(d)) {
		return NotMine
	}
	if len(d.GetState().GetJobs()) > 0 {
		return Served
	}
	if now.Sub(CreatedAt(d)) < heldAfter {
		return Pending
	}
	return Held
}

// KeyOf is d's agent name and deployment.
func KeyOf(d *livekit.AgentDispatch) Key {
	return Key{AgentName: d.GetAgentName(), Deployment: d.GetDeployment()}
}

// CreatedAt is when the server created d.
func CreatedAt(d *livekit.AgentDispatch) time.Time { return time.Unix(0, d.GetState().GetCreatedAt()) }

// Defaults of Config.
const (
	// DefaultHeldAfter: a dispatch with no job this long after its
	// creation is held.
	DefaultHeldAfter = 10 * time.Second
	// DefaultConcurrency is how many rooms' dispatches are listed at once.
	DefaultConcurrency = 4
	// SuspectAfter: a dispatch with no job this long after its creation
	// may have been dropped (most get their job within a second): a sweep
	// reports when it could be held (Result.NextHeld).
	SuspectAfter = 2 * time.Second
)

// Config configures a Sweeper.
type Config struct {
	API API
	// Mine says which keys the sweep serves; nil = all.
	Mine func(Key) bool
	// HeldAfter: see DefaultHeldAfter.
	HeldAfter time.Duration
	// HeldAfterFor, if set, says how old a dispatch created at created
	// must be to be taken as held, instead of HeldAfter: a worker that was
	// available all along since then asks for longer, since the server may
	// still be working through its queue of job requests.
	HeldAfterFor func(created time.Time) time.Duration
	// Concurrency: see DefaultConcurrency.
	Concurrency int
	// Log receives a line per dispatch served and per failed claim.
	Log *slog.Logger
	// Now is the clock; nil = time.Now.
	Now func() time.Time
}

// Sweeper sweeps. It is safe for concurrent use; sweeps of one Sweeper run
// one at a time.
type Sweeper struct {
	c  Config
	mu sync.Mutex // one sweep at a time
}

// New returns a Sweeper of c, with defaults for its zero fields.
func New(c Config) *Sweeper {
	if c.HeldAfter <= 0 {
		c.HeldAfter = DefaultHeldAfter
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return &Sweeper{c: c}
}

// HeldAfter is the Sweeper's HeldAfter.
func (s *Sweeper) HeldAfter() time.Duration { return s.c.HeldAfter }

// Recovery is one held dispatch served by a sweep.
type Recovery struct {
	Key
	Room string
	// Old is the held dispatch, New its replacement.
	Old, New string
	// Held is how long the old dispatch had waited.
	Held time.Duration
}

// Result is what a sweep found and did.
type Result struct {
	// Rooms is how many rooms were listed; Listed how many of them had
	// their dispatches listed.
	Rooms, Listed int
	// Calls is how many API calls the sweep made.
	Calls int
	// Unserved counts, per key, the dispatches that have no job (held
	// ones, served or not by this sweep, and pending ones).
	Unserved map[Key]int
	// Held counts, per key, the held dispatches found.
	Held map[Key]int
	// Recovered are the held dispatches served by this sweep.
	Recovered []Recovery
	// Lost counts claims that found the dispatch gone: served by another
	// sweeper, or deleted by its owner.
	Lost int
	// NextHeld is when the oldest pending dispatch at least SuspectAfter
	// old will be old enough to be held; zero if none.
	NextHeld time.Time
}

// Sweep lists the rooms and their dispatches and serves up to limit held
// dispatches, oldest first (limit < 0: all; 0: none, count only). Rooms
// named with LeasePrefix are skipped. An error means the rooms could not
// be listed; a room whose dispatches could not be listed, or a claim that
// failed, is logged and the sweep goes on (the error returned then joins
// them, with the Result of what was done).
func (s *Sweeper) Sweep(ctx context.Context, limit int) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	res := Result{Unserved: map[Key]int{}, Held: map[Key]int{}}
	rooms, err := s.c.API.ListRooms(ctx)
	res.Calls++
	if err != nil {
		return res, fmt.Errorf("held: list rooms: %w", err)
	}
	res.Rooms = len(rooms)
	now := s.c.Now()
	var names []string
	for _, r := range rooms {
		if !strings.HasPrefix(r.GetName(), LeasePrefix) {
			names = append(names, r.GetName())
		}
	}
	res.Listed = len(names)

	var (
		mu    sync.Mutex
		held  []*livekit.AgentDispatch
		errs  []error
		group errgroup.Group
	)
	group.SetLimit(s.c.Concurrency)
	for _, name := range names {
		group.Go(func() error {
			ds, err := s.c.API.ListDispatches(ctx, name)
			mu.Lock()
			defer mu.Unlock()
			res.Calls++
			if err != nil {
				errs = append(errs, fmt.Errorf("held: list the dispatches of room %q: %w", name, err))
				return nil
			}
			for _, d := range ds {
				after := s.c.HeldAfter
				if s.c.HeldAfterFor != nil {
					after = s.c.HeldAfterFor(CreatedAt(d))
				}
				switch Classify(d, now, after, s.c.Mine) {
				case Pending:
					res.Unserved[KeyOf(d)]++
					// Most pending dispatches get their job within a
					// second; one still waiting is worth a look when it
					// can be held.
					if now.Sub(CreatedAt(d)) < SuspectAfter {
						break
					}
					if at := CreatedAt(d).Add(after); res.NextHeld.IsZero() || at.Before(res.NextHeld) {
						res.NextHeld = at
					}
				case Held:
					res.Unserved[KeyOf(d)]++
					res.Held[KeyOf(d)]++
					held = append(held, d)
				}
			}
			return nil
		})
	}
	_ = group.Wait()
	for _, err := range errs {
		s.c.Log.Warn("held dispatches: listing a room's dispatches failed", slog.Any("error", err))
	}

	slices.SortFunc(held, func(a, b *livekit.AgentDispatch) int {
		return cmp.Compare(a.GetState().GetCreatedAt(), b.GetState().GetCreatedAt())
	})
	if limit >= 0 && len(held) > limit {
		held = held[:limit]
	}
	for _, d := range held {
		if ctx.Err() != nil {
			errs = append(errs, context.Cause(ctx))
			break
		}
		rec, calls, err := s.serve(ctx, d, now)
		res.Calls += calls
		switch {
		case errors.Is(err, ErrGone):
			res.Lost++
		case err != nil:
			errs = append(errs, err)
			s.c.Log.Warn("held dispatch: serving it failed", slog.String("room", d.GetRoom()), slog.String("dispatch", d.GetId()),
				slog.String("agent_name", d.GetAgentName()), slog.String("deployment", d.GetDeployment()), slog.Any("error", err))
		default:
			res.Recovered = append(res.Recovered, rec)
		}
	}
	return res, errors.Join(errs...)
}

// ambiguousWait is how long a claim whose delete failed waits for another
// claimant's replacement before taking the claim as its own.
const ambiguousWait = 2 * time.Second

// ambiguousClaim decides a claim whose delete returned an error: mine if d
// is gone and, ambiguousWait later, nothing replaced it; an error if d is
// still there or the room could not be listed.
func (s *Sweeper) ambiguousClaim(ctx context.Context, d *livekit.AgentDispatch) (mine bool, calls int, err error) {
	check := func() (gone, replaced bool, err error) {
		calls++
		ds, err := s.c.API.ListDispatches(ctx, d.GetRoom())
		if err != nil {
			return false, false, err
		}
		gone = true
		for _, x := range ds {
			switch {
			case x.GetId() == d.GetId():
				gone = false
			case x.GetAgentName() == d.GetAgentName() && x.GetDeployment() == d.GetDeployment() &&
				x.GetMetadata() == d.GetMetadata() && x.GetState().GetCreatedAt() > d.GetState().GetCreatedAt():
				replaced = true
			}
		}
		return gone, replaced, nil
	}
	gone, replaced, err := check()
	if err != nil {
		return false, calls, err
	}
	if !gone {
		return false, calls, errors.New("the dispatch is still listed")
	}
	if replaced {
		return false, calls, nil
	}
	t := time.NewTimer(ambiguousWait)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		return false, calls, context.Cause(ctx)
	}
	_, replaced, err = check()
	return err == nil && !replaced, calls, err
}

// claimedTimeout bounds the creation of a claimed dispatch's replacement,
// retries included: once claimed, it is finished even if ctx ends.
const claimedTimeout = 30 * time.Second

// serve claims d and re-creates it; ErrGone if the claim found it gone.
func (s *Sweeper) serve(ctx context.Context, d *livekit.AgentDispatch, now time.Time) (Recovery, int, error) {
	calls := 1
	if err := s.c.API.DeleteDispatch(ctx, d.GetRoom(), d.GetId()); err != nil {
		if errors.Is(err, ErrGone) {
			s.c.Log.Debug("held dispatch already gone: served by another worker, or deleted", slog.String("room", d.GetRoom()), slog.String("dispatch", d.GetId()))
			return Recovery{}, calls, ErrGone
		}
		// The server may have deleted it and failed to answer (seen:
		// "marshaling livekit.AgentDispatch: size mismatch", when a job
		// was being added to it at that moment). If it is gone and no
		// other claimant replaced it shortly, the claim was this one's.
		mine, n, cerr := s.ambiguousClaim(ctx, d)
		calls += n
		if cerr != nil || !mine {
			if cerr == nil {
				cerr = ErrGone
			}
			return Recovery{}, calls, errors.Join(fmt.Errorf("held: claim dispatch %s of room %q: %w", d.GetId(), d.GetRoom(), err), cerr)
		}
		s.c.Log.Info("held dispatch: its delete failed but it is gone and no other worker replaced it: re-creating it",
			slog.String("room", d.GetRoom()), slog.String("dispatch", d.GetId()), slog.Any("error", err))
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimedTimeout)
	defer cancel()
	req := &livekit.CreateAgentDispatchRequest{
		AgentName:     d.GetAgentName(),
		Room:          d.GetRoom(),
		Metadata:      d.GetMetadata(),
		RestartPolicy: d.GetRestartPolicy(),
		Deployment:    d.GetDeployment(),
		Attributes:    d.GetAttributes(),
		ThreadId:      d.GetThreadId(),
	}
	var (
		nd  *livekit.AgentDispatch
		err error
	)
	for attempt := range 3 {
		calls++
		if nd, err = s.c.API.CreateDispatch(ctx, req); err == nil {
			break
		}
		t := time.NewTimer(time.Duration(attempt+1) * 500 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	if err != nil {
		return Recovery{}, calls, fmt.Errorf("held: dispatch %s of room %q was claimed but its replacement could not be created: %w", d.GetId(), d.GetRoom(), err)
	}
	rec := Recovery{Key: KeyOf(d), Room: d.GetRoom(), Old: d.GetId(), New: nd.GetId(), Held: now.Sub(CreatedAt(d))}
	s.c.Log.Info("held dispatch served: re-created for the workers registered now", slog.String("room", rec.Room),
		slog.String("agent_name", rec.AgentName), slog.String("deployment", rec.Deployment),
		slog.String("held_dispatch", rec.Old), slog.String("new_dispatch", rec.New), slog.Duration("held_for", rec.Held.Round(time.Millisecond)))
	return rec, calls, nil
}
