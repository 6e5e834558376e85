package jobproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// orphanGrace is how long a job whose parent went away has to return
// before the process exits anyway.
const orphanGrace = 10 * time.Second

// childEnv is what the parent put in this process's environment, read
// (and removed, so that processes the job starts do not inherit it) when
// the package is initialized.
var childEnv = takeChildEnv()

type childSetup struct {
	ok      bool
	version int
	fd      int
	err     error
}

func takeChildEnv() childSetup {
	v, ok := os.LookupEnv(envChild)
	if !ok {
		return childSetup{}
	}
	_ = os.Unsetenv(envChild)
	s := childSetup{ok: true}
	ver, fd, found := strings.Cut(v, ":")
	var err1, err2 error
	s.version, err1 = strconv.Atoi(ver)
	s.fd, err2 = strconv.Atoi(fd)
	if !found || err1 != nil || err2 != nil || s.fd < 3 {
		s.err = fmt.Errorf("jobproc: malformed %s=%q", envChild, v)
		return s
	}
	keepFromChildren(s.fd)
	return s
}

// IsChild says whether this process is a job process, started by a [Pool]
// to serve one job. The variable that says so is removed from the
// environment when the package is initialized, so that the processes a job
// starts are not taken for job processes.
func IsChild() bool { return childEnv.ok }

// RunFunc runs the job s in a job process. ctx is cancelled when the parent
// cancels the job (context.Cause is then a *CauseError) or goes away. r
// reports statuses and carries log records to the parent.
type RunFunc func(ctx context.Context, s Spec, r *Reporter) Outcome

var served atomic.Bool

// Serve is a job process's side of the channel: it reports ready to the
// parent, waits for the job, calls run with it, answers pings meanwhile,
// sends run's outcome (a panic in run is reported as one), and returns.
// The process should then exit: the parent kills a process that has not
// exited a few seconds after its end.
//
// Serve ignores SIGINT, SIGTERM and SIGHUP from then on: the parent
// cancels the job, and on Linux the process dies with its parent.
//
// If the parent goes away, ctx of run is cancelled with a *CauseError of
// code [CodeParentGone], Serve returns [ErrParentGone] once run returned,
// and if run has not returned 10 seconds later the process exits with
// code 1. Serve returns ctx.Err() if ctx is done before a job came. It may
// be called once per process.
func Serve(ctx context.Context, run RunFunc) error { return ServeOptions{}.Serve(ctx, run) }

// ServeOptions add to what [Serve] does.
type ServeOptions struct {
	// Prepare, if set, runs once before the process reports ready, with a
	// context that ends with Serve's ctx or when the parent goes away: it
	// makes what every job of the process uses (the runtime's prewarm
	// hook). The parent's StartTimeout bounds it. If it fails, Serve
	// returns its error without reporting ready; the process should then
	// exit with a non-zero code, which the parent counts as a failed start.
	Prepare func(ctx context.Context) error
}

// Serve is [Serve] with o.
func (o ServeOptions) Serve(ctx context.Context, run RunFunc) error {
	if !childEnv.ok {
		return errors.New("jobproc: Serve in a process that is not a job process")
	}
	if childEnv.err != nil {
		return childEnv.err
	}
	if !served.CompareAndSwap(false, true) {
		return errors.New("jobproc: Serve called twice")
	}
	// The parent decides when the job stops: signals sent to every process
	// of a service (systemd's default on stop) or a session are for it.
	// SIGQUIT still dumps the goroutines.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	conn, err := fileConn(os.NewFile(uintptr(childEnv.fd), "jobproc"))
	if err != nil {
		return fmt.Errorf("jobproc: the channel to the parent: %w", err)
	}
	c := &child{conn: conn, jobs: make(chan *jobMsg, 1), gone: make(chan struct{}), readerDone: make(chan struct{}),
		reported: make(chan struct{})}
	defer func() {
		conn.Close()
		<-c.readerDone
	}()
	go c.read()
	warmUp()
	if o.Prepare != nil {
		if err := c.prepare(ctx, o.Prepare); err != nil {
			return err
		}
	}
	if err := c.write(helloMsg{version: ProtocolVersion, pid: os.Getpid()}.frame()); err != nil {
		return ErrParentGone
	}
	var m *jobMsg
	select {
	case m = <-c.jobs:
	case <-c.gone:
		return ErrParentGone
	case <-ctx.Done():
		return ctx.Err()
	}
	spec := Spec{Job: m.job, Identity: m.identity, URL: m.url, Token: m.token, Timing: m.timing, Extra: m.extra,
		TraceParent: m.trace[0], TraceState: m.trace[1]}
	if m.hasBase {
		spec.Base = time.Now().Add(-m.baseAge)
	}
	jobCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if c.setCancel(cancel) {
		return ErrParentGone
	}
	r := &Reporter{c: c, h: &logHandler{c: c, level: m.logLevel}}
	if err := c.write(newFrame(frameStarted, nil)); err != nil {
		return ErrParentGone
	}
	out := call(jobCtx, run, spec, r)
	c.mu.Lock()
	c.finished = true
	if c.orphan != nil {
		c.orphan.Stop()
	}
	c.mu.Unlock()
	if _, err := r.sendEnd(out); err != nil {
		return ErrParentGone
	}
	return nil
}

// warmUp sets up, before the process reports ready, what the protobuf
// runtime otherwise sets up on first use: the tables of every message type
// a job and its statuses carry (milliseconds, in a fresh process).
func warmUp() {
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName()); err == nil {
			_ = proto.Unmarshal(nil, mt.New().Interface())
		}
		fs := md.Fields()
		for i := range fs.Len() {
			f := fs.Get(i)
			if f.Message() != nil {
				walk(f.Message())
			}
			if f.IsMap() && f.MapValue().Message() != nil {
				walk(f.MapValue().Message())
			}
		}
	}
	walk((&livekit.Job{}).ProtoReflect().Descriptor())
	walk((&livekit.UpdateJobStatus{}).ProtoReflect().Descriptor())
}

// prepare runs fn with a context that also ends when the parent goes away.
func (c *child) prepare(ctx context.Context, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-c.gone:
			cancel(ErrParentGone)
		case <-stop:
		}
	}()
	return fn(ctx)
}

// call runs run, turning a panic into an outcome.
func call(ctx context.Context, run RunFunc, s Spec, r *Reporter) (o Outcome) {
	defer func() {
		if v := recover(); v != nil {
			o = PanicOutcome(v, debug.Stack())
		}
	}()
	return run(ctx, s, r)
}

// child is a job process's end of the channel.
type child struct {
	conn       net.Conn
	wmu        sync.Mutex
	jobs       chan *jobMsg
	gone       chan struct{} // closed once the channel closed
	readerDone chan struct{}

	reported chan struct{} // closed once the parent's "reported" frame came

	mu       sync.Mutex
	cancel   context.CancelCauseFunc
	cause    *CauseError // a cancellation that came before cancel was set
	finished bool
	orphan   *time.Timer
}

func (c *child) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.conn.Write(b)
	if err != nil {
		// A frame may be cut short: nothing more can be sent.
		c.conn.Close()
	}
	return err
}

// setCancel records the job's cancel function and applies a cancellation
// that came first; it says whether the parent is already gone.
func (c *child) setCancel(cancel context.CancelCauseFunc) (gone bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cancel = cancel
	if c.cause != nil {
		cancel(c.cause)
	}
	select {
	case <-c.gone:
		return true
	default:
		return false
	}
}

func (c *child) cancelWith(e *CauseError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel != nil {
		c.cancel(e)
	} else if c.cause == nil {
		c.cause = e
	}
}

// read serves the parent's frames until the channel closes.
func (c *child) read() {
	defer close(c.readerDone)
	defer c.lost()
	fr := newFrameReader(c.conn)
	gotJob := false
	for {
		t, payload, err := fr.next()
		if err != nil {
			return
		}
		msg, err := decodeFrame(t, payload)
		if err != nil {
			return
		}
		switch t {
		case frameJob:
			if gotJob {
				return
			}
			gotJob = true
			c.jobs <- msg.(*jobMsg)
		case frameReported:
			select {
			case <-c.reported:
				return // a second one: the parent broke the protocol
			default:
				close(c.reported)
			}
		case frameCancel:
			m := msg.(cancelMsg)
			c.cancelWith(&CauseError{Cause{Code: m.code, Text: m.text}})
		case framePing:
			if c.write(pingFrame(framePong, msg.(uint64))) != nil {
				return
			}
		}
	}
}

// lost handles the end of the channel: the job is cancelled, and given
// orphanGrace to return.
func (c *child) lost() {
	c.conn.Close()
	close(c.gone)
	c.cancelWith(&CauseError{Cause{Code: CodeParentGone, Text: "job cancelled: the parent process went away"}})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel != nil && !c.finished {
		c.orphan = time.AfterFunc(orphanGrace, func() {
			fmt.Fprintf(os.Stderr, "jobproc: the parent went away and the job did not return within %s; exiting\n", orphanGrace)
			os.Exit(1)
		})
	}
}

// Reporter carries a job's statuses, log records and end to the parent.
type Reporter struct {
	c *child
	h *logHandler

	endMu  sync.Mutex
	ended  bool  // the End frame was sent
	endErr error // of that send
}

// End sends the job's end to the parent ahead of the run function's return,
// and waits up to wait (at most [MaxReportWait]) until the parent has
// passed it on: the LiveKit server records a job's end itself, as the
// agent leaving its room, when the agent leaves before the worker's
// status came. Call it just before the job leaves its room. It reports
// whether the parent confirmed in time; false means it did not, or is
// gone. The run function's Outcome is then not sent again: what End sent
// is the job's end. Only the first call sends.
func (r *Reporter) End(o Outcome, wait time.Duration) bool {
	if sent, err := r.sendEnd(o); !sent || err != nil {
		return false
	}
	t := time.NewTimer(min(wait, MaxReportWait))
	defer t.Stop()
	select {
	case <-r.c.reported:
		return true
	case <-r.c.gone:
	case <-t.C:
	}
	return false
}

// sendEnd sends the End frame unless it was sent; it reports whether this
// call sent it, and the error of the send.
func (r *Reporter) sendEnd(o Outcome) (bool, error) {
	r.endMu.Lock()
	defer r.endMu.Unlock()
	if r.ended {
		return false, r.endErr
	}
	r.ended = true
	r.endErr = r.c.write(o.frame())
	return true, r.endErr
}

// Status sends a job status to the parent, which delivers it as an
// [EventStatus].
func (r *Reporter) Status(u *livekit.UpdateJobStatus) error {
	b, err := statusFrame(u)
	if err != nil {
		return err
	}
	return r.c.write(b)
}

// Handler is a slog.Handler that sends records to the parent, which
// emits them through the logger given to [Pool.Start]. It is enabled from
// the lowest level that logger emits.
func (r *Reporter) Handler() slog.Handler { return r.h }

// logHandler sends records over the channel.
type logHandler struct {
	c     *child
	level slog.Level
	goas  []groupOrAttrs // oldest first
}

// groupOrAttrs is one WithGroup or WithAttrs.
type groupOrAttrs struct {
	group string
	attrs []slog.Attr
}

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	return h.with(groupOrAttrs{attrs: as})
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(groupOrAttrs{group: name})
}

func (h *logHandler) with(g groupOrAttrs) *logHandler {
	h2 := *h
	h2.goas = append(append([]groupOrAttrs(nil), h.goas...), g)
	return &h2
}

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	attrs := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		attrs = append(attrs, a)
		return true
	})
	// Nest the record's attributes in the open groups, innermost first.
	for i := len(h.goas) - 1; i >= 0; i-- {
		g := h.goas[i]
		if g.group == "" {
			attrs = append(append([]slog.Attr(nil), g.attrs...), attrs...)
		} else if len(attrs) > 0 {
			attrs = []slog.Attr{{Key: g.group, Value: slog.GroupValue(attrs...)}}
		}
	}
	m := &logMsg{time: r.Time, level: r.Level, msg: r.Message, attrs: attrs}
	b := m.frame()
	if len(b)-4 > maxFrame {
		m.msg = truncate(m.msg, 1<<10)
		m.attrs = []slog.Attr{slog.Bool("jobproc_truncated", true)}
		b = m.frame()
	}
	return h.c.write(b)
}
