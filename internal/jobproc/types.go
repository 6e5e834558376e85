package jobproc

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/livekit/protocol/livekit"
)

// Spec is a job as the parent hands it to a job process.
type Spec struct {
	// Job is the job as the server sent it. Required.
	Job *livekit.Job
	// Identity is the participant identity the job was accepted with.
	Identity string
	// URL is the LiveKit URL the job joins its room at.
	URL string
	// Token is the room join token. It is a secret: this package never
	// logs it nor puts it in an error, and Spec's String and LogValue
	// leave it out.
	Token string
	// Base is the instant Timing counts from. In the child, Base is an
	// instant of the child's clock that stands for the parent's Base (the
	// frame carries how long ago Base was, not a wall-clock time), so
	// that Base.Add(µs) gives each recorded instant in the child's clock
	// and timings the child reports relative to Base are in the parent's
	// units. Zero: no base.
	Base time.Time
	// Timing holds the instants recorded so far, in microseconds since
	// Base (zero: not recorded).
	Timing *livekit.JobJoinTiming
	// Extra is opaque to this package: whatever else the runtime wants
	// the child to have.
	Extra []byte
	// TraceParent and TraceState are the job's trace context as W3C Trace
	// Context headers, so that the child continues the parent's trace;
	// empty when the job is not traced. Opaque to this package.
	TraceParent string
	TraceState  string
}

// String describes s without its token.
func (s Spec) String() string {
	return fmt.Sprintf("job %s (room %q, identity %q)", s.Job.GetId(), s.Job.GetRoom().GetName(), s.Identity)
}

// LogValue describes s without its token.
func (s Spec) LogValue() slog.Value {
	return slog.GroupValue(slog.String("job_id", s.Job.GetId()), slog.String("room", s.Job.GetRoom().GetName()),
		slog.String("identity", s.Identity))
}

// Cause says why a job is cancelled: a short code a program can act on and
// a text for people. This package gives meaning to no code but
// [CodeParentGone].
type Cause struct {
	Code string
	Text string
}

// CodeParentGone is the code of the cause a child cancels its job with
// when its channel to the parent closes.
const CodeParentGone = "parent_gone"

// CauseError is the error a job process's job context is cancelled with:
// context.Cause returns a *CauseError carrying the parent's [Cause], or one
// with Code [CodeParentGone] when the parent went away.
type CauseError struct{ Cause }

// Error is the cause's text, else its code.
func (e *CauseError) Error() string {
	if e.Text != "" {
		return e.Text
	}
	return e.Code
}

// ErrParentGone is returned by [Serve] when the channel to the parent
// closed before the job's end could be sent.
var ErrParentGone = errors.New("jobproc: the parent process went away")

// Outcome is how a job ended, as the child reports it.
type Outcome struct {
	// Error is the job's error; "" with Panicked false is a success.
	Error string
	// Panicked says the job panicked; Error is then the panic value and
	// Stack the goroutine's stack.
	Panicked bool
	Stack    []byte
	// Timing is the job's join timing at its end, in microseconds since
	// the Spec's Base; nil if not known.
	Timing *livekit.JobJoinTiming
	// Cause is the code of the cause the job's context was cancelled with
	// before the job ended (a parent's Cause.Code, or a code of the
	// runtime's own); "" when the job ended on its own. Only the child
	// knows which came first, its job's end or the parent's cancel.
	Cause string
	// CauseText is the cause's own words where its code alone does not
	// say all (the runtime's: the reason a job gave to end itself); "" if
	// none.
	CauseText string
}

// Success is the outcome of a job that succeeded.
func Success() Outcome { return Outcome{} }

// Failure is the outcome of a job that failed with err; a nil err is a
// success.
func Failure(err error) Outcome {
	if err == nil {
		return Outcome{}
	}
	return Outcome{Error: err.Error()}
}

// PanicOutcome is the outcome of a job that panicked with value; a nil
// stack is taken here.
func PanicOutcome(value any, stack []byte) Outcome {
	if stack == nil {
		stack = debug.Stack()
	}
	return Outcome{Error: anyText(value), Panicked: true, Stack: stack}
}

// EndKind says how a job process ended.
type EndKind int

// Kinds of ends. The first three are the child's own report; the others
// are how it died without one. Their String forms suit a metric label.
const (
	// EndSucceeded: the child reported that the job succeeded.
	EndSucceeded EndKind = iota + 1
	// EndFailed: the child reported that the job failed; Error is the
	// job's error text.
	EndFailed
	// EndPanicked: the child reported that the job panicked; Error is the
	// panic value and Stack the stack.
	EndPanicked
	// EndExited: the process exited with ExitCode without reporting an
	// end (os.Exit in the job, for example).
	EndExited
	// EndSignaled: the process was killed by Signal, not by this package
	// (the kernel's out-of-memory killer sends SIGKILL; a crash in C code
	// SIGSEGV or SIGABRT).
	EndSignaled
	// EndFatal: the Go runtime ended the process: a fatal error such as
	// "concurrent map writes", or a panic no one recovered on some
	// goroutine. Error is the first such line of its stderr ("fatal
	// error: …", "panic: …").
	EndFatal
	// EndMemoryLimit: killed by the pool because its resident set passed
	// the MemoryLimit; RSS is what was seen.
	EndMemoryLimit
	// EndUnresponsive: killed by the pool because it stopped answering
	// pings.
	EndUnresponsive
	// EndKilled: killed on request ([Proc.Kill]), because the pool closed,
	// or because it broke the protocol; Error is the reason.
	EndKilled
	// EndLost: its channel closed before it reported an end and it did
	// not exit, so the pool killed it.
	EndLost
	// EndStartFailed: it never became ready: it could not be executed,
	// exited or was killed first, did not report ready within the
	// StartTimeout, or speaks another protocol version. Error says which.
	EndStartFailed
)

var endKindNames = [...]string{
	EndSucceeded:    "succeeded",
	EndFailed:       "failed",
	EndPanicked:     "panicked",
	EndExited:       "exited",
	EndSignaled:     "signaled",
	EndFatal:        "fatal",
	EndMemoryLimit:  "memory_limit",
	EndUnresponsive: "unresponsive",
	EndKilled:       "killed",
	EndLost:         "lost",
	EndStartFailed:  "start_failed",
}

func (k EndKind) String() string {
	if k > 0 && int(k) < len(endKindNames) {
		return endKindNames[k]
	}
	return fmt.Sprintf("EndKind(%d)", int(k))
}

// End is how a job process ended.
type End struct {
	Kind EndKind
	// Error is the detail of the end: the job's error text (EndFailed),
	// the panic value (EndPanicked), the runtime's line (EndFatal), or a
	// phrase saying what happened (the others; "" for EndSucceeded).
	Error string
	// Stack is the stack of a panic (EndPanicked).
	Stack []byte
	// Timing is the join timing the child reported with its end, in
	// microseconds since the Spec's Base; nil if it sent none.
	Timing *livekit.JobJoinTiming
	// Cause and CauseText are the child's Outcome.Cause and
	// Outcome.CauseText (reported ends only).
	Cause     string
	CauseText string
	// Pid is the process's id.
	Pid int
	// ExitCode is the process's exit code; -1 if a signal killed it or
	// it was never started.
	ExitCode int
	// Signal names the signal that killed the process ("SIGKILL"), or "".
	Signal string
	// RSS is the resident set, in bytes, that passed the memory limit
	// (EndMemoryLimit); else 0.
	RSS int64
	// MaxRSS is the process's peak resident set in bytes as the kernel
	// counted it; 0 where unknown.
	MaxRSS int64
	// Stderr is the end of what the process wrote to its stderr: its last
	// lines (at most 20 lines, 4 KiB), led by the runtime's fatal error or
	// panic line and the lines after it when those scrolled out.
	Stderr string
}

// Reported says whether the child reported the end itself.
func (e End) Reported() bool {
	return e.Kind == EndSucceeded || e.Kind == EndFailed || e.Kind == EndPanicked
}

// Err is nil for a success and an *EndError otherwise.
func (e End) Err() error {
	if e.Kind == EndSucceeded {
		return nil
	}
	return &EndError{End: e}
}

// String is a one-line description of e.
func (e End) String() string {
	switch e.Kind {
	case EndSucceeded:
		return "job succeeded"
	case EndFailed:
		return e.Error
	case EndPanicked:
		return "job handler panicked: " + e.Error
	case EndFatal:
		return "job process crashed: " + e.Error
	case EndMemoryLimit, EndUnresponsive, EndKilled:
		return "job process killed: " + e.Error
	case EndLost:
		return "job process lost: " + e.Error
	case EndStartFailed:
		return "job process did not start: " + e.Error
	}
	return "job process " + e.Error
}

// EndError is the error of an end that is not a success. Its text is the
// end's one-line description; the stderr tail is in End.Stderr.
type EndError struct{ End End }

func (e *EndError) Error() string { return e.End.String() }

// ErrClosed is returned by [Pool.Start] once the pool is closed.
var ErrClosed = errors.New("jobproc: pool closed")

// ErrUnhealthy is wrapped by the error [Pool.Healthy] returns when the
// pool cannot start job processes.
var ErrUnhealthy = errors.New("job processes cannot start")

// EventKind says what an [Event] is.
type EventKind int

// Kinds of events.
const (
	// EventStarted: the child is calling the job's function.
	EventStarted EventKind = iota + 1
	// EventStatus: the job reported Status.
	EventStatus
	// EventMemoryWarn: the process's resident set passed MemoryWarn (RSS);
	// sent once per process.
	EventMemoryWarn
	// EventEnd: the child reported its job's end (End, as [Proc.Wait]
	// will give it, without the process's exit) and waits, still in the
	// job's room, until the parent calls [Proc.Reported] or
	// [MaxReportWait] passed.
	EventEnd
)

// Event is something a running job process did.
type Event struct {
	Kind EventKind
	// At is when the parent learned of it.
	At     time.Time
	Status *livekit.UpdateJobStatus
	RSS    int64
	End    End
}

// MaxReportWait bounds how long a child that reported its job's end
// ([Reporter.End]) waits for the parent's [Proc.Reported] before it goes
// on; the parent gives such a child this long on top of ExitTimeout to
// exit.
const MaxReportWait = 5 * time.Second
