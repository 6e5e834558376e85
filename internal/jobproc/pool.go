package jobproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// envChild names the environment variable that makes a process a job
// process: "<protocol version>:<descriptor of its end of the channel>".
const envChild = "LKAGENT_JOBPROC"

// childFD is the descriptor of the channel in the child: the first of
// exec.Cmd.ExtraFiles.
const childFD = 3

// Defaults of [Options].
const (
	DefaultStartTimeout   = 10 * time.Second
	DefaultPingInterval   = 2 * time.Second
	DefaultPingTimeout    = 20 * time.Second
	DefaultMemoryInterval = time.Second
	DefaultExitTimeout    = 5 * time.Second
	DefaultCrashLoop      = 3
)

// refillDelay is how long after a warm process is taken its replacement
// is started.
const refillDelay = 20 * time.Millisecond

// Backoff between failing starts: it doubles from the first to the last.
var (
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
)

// Options configure a [Pool]. The zero value is usable.
type Options struct {
	// Path is the executable job processes run. Default: the running
	// executable (on Linux /proc/self/exe, which stays the parent's own
	// binary even if its file is replaced on disk while it runs).
	Path string
	// Args are the arguments after the program name. Nil: the parent's
	// own (os.Args[1:]); use an empty slice for none. The program name is
	// the parent's os.Args[0] when Path is the default, else Path.
	Args []string
	// Env is added to the parent's environment ("KEY=value"). Job
	// processes inherit the parent's stdout; their stderr is read by the
	// pool (see End.Stderr and Logger).
	Env []string
	// Idle is the number of warm processes kept ready: started ahead,
	// waiting for a job. A process serves one job; a new one replaces it.
	Idle int
	// StartTimeout bounds how long a process has to report ready; past it
	// the process is killed and the start counts as failed. Default 10s.
	StartTimeout time.Duration
	// MemoryWarn, in bytes of resident set: a running process past it is
	// logged at Warn and an EventMemoryWarn is sent, once. 0: off.
	MemoryWarn int64
	// MemoryLimit, in bytes of resident set: a process past it is killed
	// and ends with EndMemoryLimit. 0: off. Both are checked every
	// MemoryInterval (default 1s), on Linux only, and every
	// MemoryInterval/20 (at least 10ms) while a process's resident set is
	// above half the limit. It is a poll: a process that grows fast passes
	// the limit by what it allocates in one interval before it is killed.
	// With a limit, the child also gets GOMEMLIMIT (softMemoryLimit of it)
	// unless the environment sets one: a soft limit for its Go heap.
	MemoryLimit    int64
	MemoryInterval time.Duration
	// PingInterval is how often each process is pinged (default 2s);
	// one that has sent nothing for PingTimeout (default 20s) is killed
	// and ends with EndUnresponsive.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// ExitTimeout is how long a process may take to exit after it
	// reported its end or its channel closed, before it is killed.
	// Default 5s.
	ExitTimeout time.Duration
	// CrashLoop is how many starts failing in a row make the pool
	// unhealthy (a start that timed out does at once). Default 3.
	CrashLoop int
	// Logger receives the pool's own lines, and the log records and
	// stderr lines of processes that have no job (yet). Default
	// slog.Default().
	Logger *slog.Logger
	// OnHealth, if set, is called with the pool's health whenever it
	// changes between healthy (nil) and not, from a goroutine of the
	// pool's; it must not block.
	OnHealth func(err error)
}

// Stats is a snapshot of a pool's processes.
type Stats struct {
	Ready    int // warm, waiting for a job
	Starting int // started, not ready yet
	Running  int // handed a job, not yet ended
	Waiting  int // Start calls waiting for a process
	// StartFailures is the number of starts that failed in a row.
	StartFailures int
}

// Pool starts job processes and hands them jobs.
type Pool struct {
	o       Options
	argv0   string
	env     []string
	log     *slog.Logger
	closing chan struct{}
	kickC   chan struct{}
	wg      sync.WaitGroup // every goroutine of the pool and its processes

	healthMu   sync.Mutex // serializes health notifications
	lastHealth error

	mu       sync.Mutex
	closed   bool
	all      map[*Proc]struct{} // every process not yet ended
	ready    []*Proc            // warm, oldest first
	starting int                // processes spawned or being spawned, not ready
	spawning int                // spawn calls in progress
	running  int
	waiters  []*waiter
	failures int // consecutive start failures
	timedOut bool
	lastFail string
	nextTry  time.Time
	empty    chan struct{} // closed once closed and every process ended
}

type waiter struct {
	ch chan takeResult // buffered 1
}

type takeResult struct {
	p    *Proc
	warm bool
	err  error
}

// New starts a pool and its warm processes.
func New(o Options) (*Pool, error) {
	if !supported {
		return nil, errUnsupported
	}
	argv0 := o.Path
	if o.Path == "" {
		p, ok := defaultPath()
		if !ok {
			return nil, errors.New("jobproc: cannot find the running executable; set Options.Path")
		}
		o.Path, argv0 = p, os.Args[0]
	}
	if o.Args == nil && len(os.Args) > 1 {
		o.Args = os.Args[1:]
	}
	if o.Idle < 0 {
		return nil, errors.New("jobproc: negative Idle")
	}
	if o.MemoryWarn < 0 || o.MemoryLimit < 0 {
		return nil, errors.New("jobproc: negative memory level")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.StartTimeout, DefaultStartTimeout)
	def(&o.PingInterval, DefaultPingInterval)
	def(&o.PingTimeout, DefaultPingTimeout)
	def(&o.MemoryInterval, DefaultMemoryInterval)
	def(&o.ExitTimeout, DefaultExitTimeout)
	if o.CrashLoop <= 0 {
		o.CrashLoop = DefaultCrashLoop
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	env := append(os.Environ(), o.Env...)
	env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, envChild+"=") })
	if o.MemoryLimit > 0 && !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "GOMEMLIMIT=") }) {
		// A soft limit below the hard one: the child's Go runtime collects
		// garbage harder as its heap nears it, so that a job whose memory
		// is mostly garbage stays under the limit instead of being killed.
		env = append(env, "GOMEMLIMIT="+strconv.FormatInt(softMemoryLimit(o.MemoryLimit), 10))
	}
	env = append(env, envChild+"="+strconv.Itoa(ProtocolVersion)+":"+strconv.Itoa(childFD))
	p := &Pool{
		o:       o,
		argv0:   argv0,
		env:     env,
		log:     o.Logger,
		closing: make(chan struct{}),
		kickC:   make(chan struct{}, 1),
		all:     make(map[*Proc]struct{}),
	}
	p.wg.Add(1)
	go p.keeper()
	return p, nil
}

// Start hands the job s to a process: a warm one if one is ready, else one
// started now (within the StartTimeout). log receives the process's log
// records, its stderr lines and the pool's lines about it (nil: the pool's
// Logger); give it the job's attributes. A process that cannot start makes
// Start return an *EndError whose End has Kind EndStartFailed; ctx bounds
// the wait.
func (p *Pool) Start(ctx context.Context, s Spec, log *slog.Logger) (*Proc, error) {
	if s.Job == nil {
		return nil, errors.New("jobproc: Start without a job")
	}
	if log == nil {
		log = p.log
	}
	for attempt := 0; ; attempt++ {
		pr, warm, err := p.take(ctx)
		if err != nil {
			return nil, err
		}
		pr.warm = warm
		err = pr.sendJob(s, log)
		if err == nil {
			return pr, nil
		}
		// The process died or broke while it waited; try another once.
		pr.kill(EndKilled, "could not be handed its job: "+err.Error(), 0)
		if attempt == 1 || ctx.Err() != nil {
			return nil, fmt.Errorf("jobproc: hand the job to a job process: %w", err)
		}
	}
}

// take claims a ready process, or waits for one to be started.
func (p *Pool) take(ctx context.Context) (*Proc, bool, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, false, ErrClosed
	}
	if len(p.ready) > 0 {
		pr := p.ready[0]
		p.ready = slices.Delete(p.ready, 0, 1)
		pr.state = stRunning
		p.running++
		p.mu.Unlock()
		// The replacement starts a moment later: its start (fork, exec,
		// the runtime's init) would compete for the CPU with this job's.
		time.AfterFunc(refillDelay, p.kick)
		return pr, true, nil
	}
	w := &waiter{ch: make(chan takeResult, 1)}
	p.waiters = append(p.waiters, w)
	p.mu.Unlock()
	p.kick()
	select {
	case r := <-w.ch:
		return r.p, r.warm, r.err
	case <-ctx.Done():
	}
	p.mu.Lock()
	i := slices.Index(p.waiters, w)
	if i >= 0 {
		p.waiters = slices.Delete(p.waiters, i, i+1)
	}
	p.mu.Unlock()
	if i < 0 {
		// Served meanwhile: give the process back.
		if r := <-w.ch; r.p != nil {
			p.giveBack(r.p)
		}
	}
	return nil, false, ctx.Err()
}

// giveBack returns a claimed process that was not handed a job.
func (p *Pool) giveBack(pr *Proc) {
	p.mu.Lock()
	ok := pr.state == stRunning && !p.closed
	if ok {
		pr.state = stReady
		p.running--
		p.ready = append(p.ready, pr)
	}
	p.mu.Unlock()
	if !ok {
		pr.kill(EndKilled, "pool closed", 0)
	}
}

// Healthy is nil while the pool can start processes, and otherwise an
// error wrapping ErrUnhealthy that says why: the last start timed out, or
// the last CrashLoop starts failed. It is healthy again once a start
// succeeds; after a failed start the pool retries with backoff (up to 5s
// apart) until one succeeds, even when no warm process is asked for.
func (p *Pool) Healthy() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.healthLocked()
}

func (p *Pool) healthLocked() error {
	switch {
	case p.failures == 0:
		return nil
	case p.timedOut:
		return fmt.Errorf("%w: the last start timed out: %s", ErrUnhealthy, p.lastFail)
	case p.failures >= p.o.CrashLoop:
		return fmt.Errorf("%w: %d starts in a row failed; the last: %s", ErrUnhealthy, p.failures, p.lastFail)
	}
	return nil
}

// notifyHealth tells OnHealth and the log about a change of health.
func (p *Pool) notifyHealth() {
	p.healthMu.Lock()
	defer p.healthMu.Unlock()
	err := p.Healthy()
	if (err == nil) == (p.lastHealth == nil) {
		return
	}
	p.lastHealth = err
	if err != nil {
		p.log.Warn("job process pool unhealthy", slog.Any("error", err))
	} else {
		p.log.Info("job process pool healthy again")
	}
	if p.o.OnHealth != nil {
		p.o.OnHealth(err)
	}
}

// Stats returns a snapshot of the pool's processes.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Ready: len(p.ready), Starting: p.starting, Running: p.running,
		Waiting: len(p.waiters), StartFailures: p.failures}
}

// Close ends the pool: it fails waiting Start calls, kills the processes
// that have no job at once, and waits for those running a job to end
// until ctx is done, then kills them too. It returns once every process
// has been reaped and every goroutine of the pool has returned; the error
// says how many running processes it had to kill.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		p.empty = make(chan struct{})
		close(p.closing)
		for _, w := range p.waiters {
			w.ch <- takeResult{err: ErrClosed}
		}
		p.waiters = nil
		p.checkEmptyLocked()
	}
	var idle []*Proc
	for pr := range p.all {
		if pr.state != stRunning {
			idle = append(idle, pr)
		}
	}
	empty := p.empty
	p.mu.Unlock()
	for _, pr := range idle {
		pr.kill(EndKilled, "pool closed", 0)
	}
	var err error
	select {
	case <-empty:
	case <-ctx.Done():
		p.mu.Lock()
		var left []*Proc
		for pr := range p.all {
			left = append(left, pr)
		}
		p.mu.Unlock()
		for _, pr := range left {
			pr.kill(EndKilled, "pool closed", 0)
		}
		if len(left) > 0 {
			err = fmt.Errorf("jobproc: killed %d job processes still running when the pool closed", len(left))
		}
		<-empty
	}
	p.wg.Wait()
	return err
}

func (p *Pool) checkEmptyLocked() {
	if p.closed && len(p.all) == 0 && p.spawning == 0 {
		select {
		case <-p.empty:
		default:
			close(p.empty)
		}
	}
}

func (p *Pool) kick() {
	select {
	case p.kickC <- struct{}{}:
	default:
	}
}

// keeper starts processes: enough to keep Idle ready and to serve the
// waiting Start calls; one at a time, with backoff, while starts fail; and
// one to probe with after a failed start, even with Idle 0 (once one
// starts, it stays ready for the next job).
func (p *Pool) keeper() {
	defer p.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		n, wait := p.plan()
		for range n {
			p.spawnOne()
		}
		if wait > 0 {
			timer.Reset(wait)
		}
		select {
		case <-p.closing:
			return
		case <-p.kickC:
		case <-timer.C:
		}
	}
}

// plan says how many processes to start now, or how long to wait before
// the next try; it counts them as starting.
func (p *Pool) plan() (n int, wait time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, 0
	}
	want := p.o.Idle + len(p.waiters)
	if want == 0 && p.failures > 0 {
		want = 1 // a probe, to learn whether starts work (again)
	}
	need := want - len(p.ready) - p.starting
	if need <= 0 {
		return 0, 0
	}
	if p.failures > 0 {
		if p.starting > 0 {
			return 0, 0
		}
		if d := time.Until(p.nextTry); d > 0 {
			return 0, d
		}
		need = 1
	}
	p.starting += need
	p.spawning += need
	return need, 0
}

// spawnOne starts a process counted as starting by plan.
func (p *Pool) spawnOne() {
	pr, err := p.spawn()
	p.mu.Lock()
	p.spawning--
	if err != nil {
		p.starting--
		e := End{Kind: EndStartFailed, Error: err.Error(), ExitCode: -1}
		p.startFailedLocked(e, false)
		p.checkEmptyLocked()
		p.mu.Unlock()
		p.log.Warn("job process could not be started", slog.Any("error", err))
		p.notifyHealth()
		return
	}
	closed := p.closed
	p.mu.Unlock()
	if closed {
		pr.kill(EndKilled, "pool closed", 0)
	}
}

// startFailedLocked records a failed start and fails the oldest waiting
// Start call with it. p.mu is held.
func (p *Pool) startFailedLocked(e End, timedOut bool) {
	if p.closed {
		return
	}
	p.failures++
	p.timedOut = timedOut
	p.lastFail = e.Error
	p.nextTry = time.Now().Add(min(backoffMin<<min(p.failures-1, 20), backoffMax))
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = slices.Delete(p.waiters, 0, 1)
		w.ch <- takeResult{err: &EndError{End: e}}
	}
}

// becameReady files a process that reported ready: it goes to the oldest
// waiting Start call, else among the warm ones.
func (p *Pool) becameReady(pr *Proc) {
	p.mu.Lock()
	if pr.state != stStarting {
		p.mu.Unlock()
		return
	}
	p.starting--
	if p.closed {
		pr.state = stReady // killed below; no failure is counted
		p.mu.Unlock()
		pr.kill(EndKilled, "pool closed", 0)
		return
	}
	p.failures, p.timedOut, p.lastFail = 0, false, ""
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = slices.Delete(p.waiters, 0, 1)
		pr.state = stRunning
		p.running++
		w.ch <- takeResult{p: pr}
	} else {
		pr.state = stReady
		p.ready = append(p.ready, pr)
	}
	p.mu.Unlock()
	p.notifyHealth()
	p.kick()
}

// ended forgets a process that ended, and returns the state it was in.
func (p *Pool) ended(pr *Proc, e End, startTimedOut bool) procState {
	p.mu.Lock()
	prev := pr.state
	pr.state = stEnded
	delete(p.all, pr)
	switch prev {
	case stStarting:
		p.starting--
		p.startFailedLocked(e, startTimedOut)
	case stReady:
		if i := slices.Index(p.ready, pr); i >= 0 {
			p.ready = slices.Delete(p.ready, i, i+1)
		}
	case stRunning:
		p.running--
	}
	closed := p.closed
	p.checkEmptyLocked()
	p.mu.Unlock()
	switch {
	case prev == stStarting && !closed:
		p.log.Warn("job process failed to start", slog.Int("pid", e.Pid), slog.String("error", e.Error),
			slog.String("stderr", e.Stderr))
		p.notifyHealth()
	case prev == stReady && !closed:
		p.log.Warn("warm job process ended before it was given a job", slog.Int("pid", e.Pid),
			slog.String("end", e.String()), slog.String("stderr", e.Stderr))
	}
	p.kick()
	return prev
}
