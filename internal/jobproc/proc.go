package jobproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livekit/protocol/livekit"
)

const (
	// writeTimeout bounds a write to a child; a child that does not read
	// its channel for that long is killed as unresponsive.
	writeTimeout = 5 * time.Second
	// drainGrace is how long, once a process exited, its channel and
	// stderr are still read: long enough for what it wrote before it
	// exited, not for what a process it started keeps writing.
	drainGrace = time.Second
	// eventBuffer is how many events wait for a reader of Events before
	// new ones are dropped.
	eventBuffer = 64
)

type procState int

const (
	stStarting procState = iota // spawned, no hello yet
	stReady                     // warm, no job
	stRunning                   // claimed by Start or running its job
	stEnded
)

// errEnded is returned by Cancel once the process has ended.
var errEnded = errors.New("jobproc: the job process has ended")

// Proc is a job process handed a job by [Pool.Start]. Its methods are safe
// for concurrent use.
type Proc struct {
	pool    *Pool
	cmd     *exec.Cmd
	pid     int
	conn    net.Conn
	stderr  *os.File
	spawned time.Time
	warm    bool // set by Start: the process was ready before the job came

	state procState // guarded by pool.mu

	wmu sync.Mutex // serializes writes to conn

	logger  atomic.Pointer[slog.Logger]
	heard   atomic.Int64 // when the last frame came, in ns since spawned
	isReady atomic.Bool
	hasJob  atomic.Bool

	tail tail

	launched   chan struct{} // closed once the goroutines below may run
	readerDone chan struct{}
	stderrDone chan struct{}
	stop       chan struct{} // closed once the process exited: stops the monitor
	monDone    chan struct{}
	events     chan Event
	done       chan struct{}
	end        End // set before done is closed

	mu            sync.Mutex
	exited        bool // the process exited (it may not be reaped yet)
	killed        *killInfo
	startTimedOut bool
	report        *Outcome
	acked         bool // Reported was sent
	warned        bool
	timers        []*time.Timer
}

type killInfo struct {
	kind   EndKind
	reason string
	rss    int64
}

// spawn starts a process; it counts among p.all on return.
func (p *Pool) spawn() (*Proc, error) {
	parentF, childF, err := socketPair()
	if err != nil {
		return nil, err
	}
	conn, err := fileConn(parentF)
	if err != nil {
		childF.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		conn.Close()
		childF.Close()
		return nil, err
	}
	cmd := exec.Command(p.o.Path, p.o.Args...)
	cmd.Args[0] = p.argv0
	cmd.Env = p.env
	cmd.Stdout = os.Stdout
	cmd.Stderr = errW
	cmd.ExtraFiles = []*os.File{childF}
	cmd.SysProcAttr = sysProcAttr()
	pr := &Proc{
		pool:       p,
		cmd:        cmd,
		conn:       conn,
		stderr:     errR,
		spawned:    time.Now(),
		launched:   make(chan struct{}),
		readerDone: make(chan struct{}),
		stderrDone: make(chan struct{}),
		stop:       make(chan struct{}),
		monDone:    make(chan struct{}),
		events:     make(chan Event, eventBuffer),
		done:       make(chan struct{}),
	}
	pr.logger.Store(p.log)
	started := make(chan error, 1)
	p.wg.Add(1)
	go pr.waiter(started)
	err = <-started
	childF.Close()
	errW.Close()
	if err != nil {
		conn.Close()
		errR.Close()
		return nil, fmt.Errorf("start %s: %w", p.o.Path, err)
	}
	pr.pid = cmd.Process.Pid
	p.mu.Lock()
	p.all[pr] = struct{}{}
	p.mu.Unlock()
	p.wg.Add(3)
	go pr.reader()
	go pr.stderrLoop()
	go pr.monitor()
	pr.after(p.o.StartTimeout, pr.startTimeout)
	close(pr.launched)
	return pr, nil
}

// waiter starts the process and waits for it to exit. It keeps its OS
// thread for the process's lifetime: on Linux the parent-death signal
// fires when the thread that started the process ends, and the Go runtime
// may end an unlocked thread at any time.
func (pr *Proc) waiter(started chan<- error) {
	defer pr.pool.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := pr.cmd.Start(); err != nil {
		started <- err
		return
	}
	started <- nil
	<-pr.launched
	if waitExited(pr.pid) {
		pr.mu.Lock()
		pr.exited = true
		pr.mu.Unlock()
		// Not reaped yet, so the group is still the job's: end what the
		// job started and left behind.
		killGroup(pr.pid)
	}
	_ = pr.cmd.Wait()
	pr.mu.Lock()
	pr.exited = true
	pr.mu.Unlock()
	pr.finish()
}

// after runs fn after d unless the process ended first.
func (pr *Proc) after(d time.Duration, fn func()) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.afterLocked(d, fn)
}

func (pr *Proc) afterLocked(d time.Duration, fn func()) {
	if !pr.exited {
		pr.timers = append(pr.timers, time.AfterFunc(d, fn))
	}
}

func (pr *Proc) startTimeout() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.isReady.Load() || pr.exited || pr.killed != nil {
		return
	}
	pr.startTimedOut = true
	pr.killLocked(EndStartFailed, fmt.Sprintf("it did not report ready within %s", pr.pool.o.StartTimeout), 0)
}

// kill kills the process (and its process group) for a reason, unless it
// exited or was killed already: the first reason is the one its End gives.
func (pr *Proc) kill(kind EndKind, reason string, rss int64) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.killLocked(kind, reason, rss)
}

func (pr *Proc) killLocked(kind EndKind, reason string, rss int64) {
	if pr.exited || pr.killed != nil {
		return
	}
	pr.killed = &killInfo{kind: kind, reason: reason, rss: rss}
	killGroup(pr.pid)
}

func (pr *Proc) since() int64 { return int64(time.Since(pr.spawned)) }

// write sends a frame. A child that does not take it within writeTimeout
// is killed.
func (pr *Proc) write(b []byte) error {
	pr.wmu.Lock()
	defer pr.wmu.Unlock()
	_ = pr.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := pr.conn.Write(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		pr.kill(EndUnresponsive, fmt.Sprintf("it did not read its channel for %s", writeTimeout), 0)
	}
	return err
}

// reader reads the child's frames until its channel closes.
func (pr *Proc) reader() {
	defer pr.pool.wg.Done()
	defer close(pr.readerDone)
	<-pr.launched
	fr := newFrameReader(pr.conn)
	for {
		t, payload, err := fr.next()
		if err == nil {
			pr.heard.Store(pr.since())
			err = pr.handle(t, payload)
			if err == nil {
				continue
			}
		}
		if errors.Is(err, errMalformed) {
			pr.kill(EndKilled, "it broke the protocol: "+err.Error(), 0)
		}
		pr.channelClosed()
		return
	}
}

// channelClosed gives a process whose channel closed before it reported
// its end ExitTimeout to exit.
func (pr *Proc) channelClosed() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.exited || pr.report != nil {
		return
	}
	pr.afterLocked(pr.pool.o.ExitTimeout, func() {
		pr.kill(EndLost, "its channel closed before it reported its end, and it did not exit", 0)
	})
}

func (pr *Proc) handle(t frameType, payload []byte) error {
	msg, err := decodeFrame(t, payload)
	if err != nil {
		return err
	}
	if t != frameHello && t != frameLog && t != framePong && !pr.hasJob.Load() {
		return malformed("%v frame before a job", t)
	}
	switch t {
	case frameHello:
		h := msg.(helloMsg)
		pr.mu.Lock()
		if pr.isReady.Load() {
			pr.mu.Unlock()
			return malformed("second hello")
		}
		if h.version != ProtocolVersion {
			pr.killLocked(EndStartFailed, fmt.Sprintf("it speaks protocol version %d, not %d (another build of the program?)",
				h.version, ProtocolVersion), 0)
			pr.mu.Unlock()
			return nil
		}
		if pr.killed != nil {
			pr.mu.Unlock()
			return nil
		}
		pr.isReady.Store(true)
		pr.mu.Unlock()
		pr.pool.becameReady(pr)
	case framePong:
	case frameStarted:
		pr.emit(Event{Kind: EventStarted, At: time.Now()})
	case frameStatus:
		pr.emit(Event{Kind: EventStatus, At: time.Now(), Status: msg.(*livekit.UpdateJobStatus)})
	case frameLog:
		pr.relay(msg.(*logMsg))
	case frameEnd:
		o := msg.(Outcome)
		pr.mu.Lock()
		defer pr.mu.Unlock()
		if pr.report != nil {
			return malformed("second end")
		}
		pr.report = &o
		// The child waits for Reported (MaxReportWait at most), then
		// leaves its room and exits.
		limit := pr.pool.o.ExitTimeout + MaxReportWait
		pr.afterLocked(limit, func() {
			pr.kill(EndKilled, fmt.Sprintf("it did not exit within %s of reporting its end", limit), 0)
		})
		pr.emit(Event{Kind: EventEnd, At: time.Now(), End: reportedEnd(o, pr.pid)})
	default:
		return malformed("unexpected %v frame from a job process", t)
	}
	return nil
}

// emit queues an event for Events; with no one reading, it is dropped.
func (pr *Proc) emit(ev Event) {
	select {
	case pr.events <- ev:
	default:
		pr.logger.Load().Warn("job process event dropped: no one reads the events", slog.Int("pid", pr.pid),
			slog.Int("kind", int(ev.Kind)))
	}
}

// relay emits a log record of the child's through the process's logger.
func (pr *Proc) relay(m *logMsg) {
	h := pr.logger.Load().Handler()
	ctx := context.Background()
	if !h.Enabled(ctx, m.level) {
		return
	}
	r := slog.NewRecord(m.time, m.level, m.msg, 0)
	r.AddAttrs(m.attrs...)
	_ = h.Handle(ctx, r)
}

// stderrLoop keeps the tail of the child's stderr and forwards its lines:
// a line log/slog wrote as the record it was (see parseLogLine), others at
// Info, and at Warn from the line on where the Go runtime announced a
// crash.
func (pr *Proc) stderrLoop() {
	defer pr.pool.wg.Done()
	defer close(pr.stderrDone)
	<-pr.launched
	br := bufio.NewReaderSize(pr.stderr, maxLine)
	for {
		b, err := br.ReadSlice('\n')
		if len(b) > 0 {
			line := strings.TrimRight(string(b), "\r\n")
			level := slog.LevelInfo
			if pr.tail.add(line) {
				level = slog.LevelWarn
			}
			if rec, ok := parseLogLine(line); ok && level == slog.LevelInfo {
				// A record the program logged to its stderr (before it
				// built its worker, say) goes on as the record it was.
				rec.AddAttrs(slog.Int("pid", pr.pid))
				if h := pr.logger.Load().Handler(); h.Enabled(context.Background(), rec.Level) {
					_ = h.Handle(context.Background(), rec)
				}
			} else if strings.TrimSpace(line) != "" {
				pr.logger.Load().LogAttrs(context.Background(), level, "job process stderr",
					slog.String("line", line), slog.Int("pid", pr.pid))
			}
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

// monitor pings the child and watches its memory.
func (pr *Proc) monitor() {
	defer pr.pool.wg.Done()
	defer close(pr.monDone)
	<-pr.launched
	o := &pr.pool.o
	ping := time.NewTicker(o.PingInterval)
	defer ping.Stop()
	var memC <-chan time.Time
	var mem *time.Timer
	if o.MemoryLimit > 0 || o.MemoryWarn > 0 {
		mem = time.NewTimer(o.MemoryInterval)
		defer mem.Stop()
		memC = mem.C
	}
	var seq uint64
	for {
		select {
		case <-pr.stop:
			return
		case <-ping.C:
			if !pr.isReady.Load() {
				continue
			}
			if silent := time.Duration(pr.since() - pr.heard.Load()); silent > o.PingTimeout {
				pr.kill(EndUnresponsive, fmt.Sprintf("it answered no ping for %s", silent.Round(time.Millisecond)), 0)
				continue
			}
			seq++
			_ = pr.write(pingFrame(framePing, seq))
		case <-memC:
			mem.Reset(memoryPoll(o.MemoryInterval, o.MemoryLimit, pr.checkMemory()))
		}
	}
}

// memoryPoll is how long until the next look at a process's memory: every
// interval, and every interval/20 (at least 10ms) once its resident set is
// above half the limit, where a fast-growing job would otherwise pass the
// limit by what it allocates in a whole interval.
func memoryPoll(interval time.Duration, limit, rss int64) time.Duration {
	if limit > 0 && rss > limit/2 {
		return max(interval/20, 10*time.Millisecond)
	}
	return interval
}

// softMemoryLimit is the GOMEMLIMIT a child with a hard MemoryLimit gets:
// 90% of it, leaving room for what is not Go heap.
func softMemoryLimit(limit int64) int64 { return limit / 10 * 9 }

// checkMemory looks at the process's resident set once, kills it past the
// limit, warns past MemoryWarn, and returns what it saw (0: unknown).
func (pr *Proc) checkMemory() int64 {
	rss := readRSS(pr.pid)
	if rss == 0 {
		return 0
	}
	o := &pr.pool.o
	if o.MemoryLimit > 0 && rss > o.MemoryLimit {
		pr.kill(EndMemoryLimit, fmt.Sprintf("its resident set, %s, passed the memory limit of %s", mib(rss), mib(o.MemoryLimit)), rss)
		return rss
	}
	if o.MemoryWarn > 0 && rss > o.MemoryWarn && pr.hasJob.Load() {
		pr.mu.Lock()
		first := !pr.warned
		pr.warned = true
		pr.mu.Unlock()
		if first {
			pr.logger.Load().Warn("job process memory above the warning level", slog.Int("pid", pr.pid),
				slog.Int64("rss", rss), slog.Int64("memory_warn", o.MemoryWarn), slog.Int64("memory_limit", o.MemoryLimit))
			pr.emit(Event{Kind: EventMemoryWarn, At: time.Now(), RSS: rss})
		}
	}
	return rss
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// finish settles the end of a process that exited and was reaped.
func (pr *Proc) finish() {
	deadline := time.Now().Add(drainGrace)
	_ = pr.conn.SetReadDeadline(deadline)
	_ = pr.stderr.SetReadDeadline(deadline)
	<-pr.readerDone
	<-pr.stderrDone
	close(pr.stop)
	<-pr.monDone
	pr.conn.Close()
	pr.stderr.Close()

	pr.pool.mu.Lock()
	state := pr.state
	pr.pool.mu.Unlock()

	pr.mu.Lock()
	for _, t := range pr.timers {
		t.Stop()
	}
	pr.timers = nil
	e := pr.settle(state)
	timedOut := pr.startTimedOut
	pr.mu.Unlock()

	pr.end = e
	pr.pool.ended(pr, e, timedOut)
	close(pr.events)
	close(pr.done)
}

// settle builds the End of a process that exited while in state. pr.mu
// is held.
func (pr *Proc) settle(state procState) End {
	ps := pr.cmd.ProcessState
	code, sig := exitInfo(ps)
	e := End{Pid: pr.pid, ExitCode: code, Signal: sig, MaxRSS: maxRSS(ps), Stderr: pr.tail.String()}
	crash := pr.tail.crash()
	how := fmt.Sprintf("exited with code %d", code)
	if sig != "" {
		how = "was killed by signal " + sig
	}
	switch k := pr.killed; {
	case pr.report != nil:
		pr.report.fill(&e)
	case state == stStarting:
		e.Kind = EndStartFailed
		if k != nil {
			e.Error = k.reason
		} else {
			e.Error = "it " + how + " before it was ready"
		}
		if crash == "" {
			crash = pr.tail.last()
		}
		if crash != "" {
			e.Error += "; stderr: " + crash
		}
	case k != nil:
		e.Kind, e.Error, e.RSS = k.kind, k.reason, k.rss
	case crash != "" && (code == 2 || sig == "SIGABRT"):
		e.Kind, e.Error = EndFatal, crash
	case sig != "":
		e.Kind, e.Error = EndSignaled, how
	default:
		e.Kind, e.Error = EndExited, how
		if state == stRunning {
			e.Error += " before the job ended"
		}
	}
	return e
}

// reportedEnd is the End of a job whose child reported o, before the
// process exited.
func reportedEnd(o Outcome, pid int) End {
	e := End{Pid: pid}
	o.fill(&e)
	return e
}

// fill sets what the child's report o says of e: its kind, error, stack,
// timing and cause.
func (o *Outcome) fill(e *End) {
	e.Error, e.Stack, e.Timing, e.Cause, e.CauseText = o.Error, o.Stack, o.Timing, o.Cause, o.CauseText
	switch {
	case o.Panicked:
		e.Kind = EndPanicked
	case o.Error != "":
		e.Kind = EndFailed
	default:
		e.Kind = EndSucceeded
	}
}

// Pid is the process's id.
func (pr *Proc) Pid() int { return pr.pid }

// Warm says whether the process was started ahead and waiting when its
// job came (false: it was started for the job).
func (pr *Proc) Warm() bool { return pr.warm }

// RSS is the process's resident set in bytes now; 0 once it ended, and on
// systems other than Linux.
func (pr *Proc) RSS() int64 {
	select {
	case <-pr.done:
		return 0
	default:
		return readRSS(pr.pid)
	}
}

// Cancel asks the job to stop: the child cancels the job's context with a
// *CauseError carrying c. The first cause is the one the job sees. The
// process is not killed; see Stop and Kill for that.
func (pr *Proc) Cancel(c Cause) error {
	select {
	case <-pr.done:
		return errEnded
	default:
	}
	return pr.write(cancelMsg{code: c.Code, text: c.Text}.frame())
}

// Reported tells the child that its job's end ([EventEnd]) was passed
// on: the child then leaves the job's room and exits. Calls after the
// first, and calls before the end was reported, do nothing.
func (pr *Proc) Reported() error {
	pr.mu.Lock()
	ok := pr.report != nil && !pr.acked
	pr.acked = pr.acked || ok
	pr.mu.Unlock()
	if !ok {
		return nil
	}
	select {
	case <-pr.done:
		return errEnded
	default:
	}
	return pr.write(newFrame(frameReported, nil))
}

// Kill kills the process and what it started in its process group, now.
// Its End has Kind EndKilled with reason as its Error, unless it had
// ended otherwise first.
func (pr *Proc) Kill(reason string) { pr.kill(EndKilled, reason, 0) }

// Stop cancels the job with c, waits up to grace for the process to end,
// kills it if it did not, and returns its End.
func (pr *Proc) Stop(c Cause, grace time.Duration) End {
	_ = pr.Cancel(c)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-pr.done:
	case <-t.C:
		pr.kill(EndKilled, fmt.Sprintf("it did not end within %s of being cancelled (%s)", grace, c.Code), 0)
	}
	return pr.Wait()
}

// Events delivers what the process reports while it runs, in order; it is
// closed once the process ended. Up to 64 events wait for a reader; later
// ones are dropped (and logged) while none reads.
func (pr *Proc) Events() <-chan Event { return pr.events }

// Done is closed once the process has ended and been reaped.
func (pr *Proc) Done() <-chan struct{} { return pr.done }

// Wait waits for the process to end and returns how it ended.
func (pr *Proc) Wait() End {
	<-pr.done
	return pr.end
}

// sendJob hands the job to the process; log receives its lines from now.
func (pr *Proc) sendJob(s Spec, log *slog.Logger) error {
	pr.logger.Store(log)
	m := &jobMsg{job: s.Job, identity: s.Identity, url: s.URL, token: s.Token, timing: s.Timing,
		extra: s.Extra, logLevel: lowestLevel(log), trace: [2]string{s.TraceParent, s.TraceState}}
	if !s.Base.IsZero() {
		m.hasBase, m.baseAge = true, time.Since(s.Base)
	}
	b := m.frame()
	if len(b)-4 > maxFrame {
		return fmt.Errorf("the job takes %d bytes, more than the %d a frame may", len(b)-4, maxFrame)
	}
	pr.hasJob.Store(true)
	return pr.write(b)
}

// lowestLevel is the lowest level log emits, so that the child does not
// send records that would be dropped.
func lowestLevel(log *slog.Logger) slog.Level {
	ctx := context.Background()
	for _, l := range []slog.Level{slog.LevelDebug - 4, slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		if log.Enabled(ctx, l) {
			return l
		}
	}
	return slog.LevelError + 4
}
