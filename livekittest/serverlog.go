package livekittest

import (
	"encoding/json"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/lines"
)

// serverLog receives the server's output. It forwards the lines at or
// above the level the user asked for to the user's writer, keeps the last
// of them for failure reports, and turns the few lines that tell how the
// server placed a job into events [Server.Dispatch] waits on.
//
// The server itself always runs at "info" or "debug", because the lines
// that tell a dropped dispatch from a slow one are info lines; a user's
// "warn" or "error" is applied here, to what the user sees.
type serverLog struct {
	minRank int       // lines ranked below are not forwarded nor kept
	fwd     io.Writer // user's writer, or nil

	mu    sync.Mutex
	split *lines.Splitter
	tail  *lines.Ring // the last tailLines forwarded lines

	seq        uint64               // sequence number of the last event
	events     []logEvent           // ring of the last maxEvents events
	registered map[string]time.Time // agent name → when a worker of it last registered
	changed    chan struct{}        // closed and replaced on every event
}

const (
	tailLines     = 300
	maxEvents     = 2048
	maxLineLength = 64 << 10
)

// eventKind classifies the server log lines about agent jobs.
type eventKind int

const (
	// evRegistered: a worker registered ("worker registered").
	evRegistered eventKind = iota + 1
	// evAssigned: a worker accepted a job ("assigned job to worker").
	evAssigned
	// evNotSent: the job of a dispatch to a room was dropped ("not
	// dispatching agent job since no worker is available", "no worker
	// available to handle job").
	evNotSent
	// evRequestFailed: a job request of an agent name found no taker
	// ("failed to send job request"); the line names no room.
	evRequestFailed
)

// logEvent is one server log line about agent jobs.
type logEvent struct {
	seq    uint64
	kind   eventKind
	agent  string
	room   string
	reason string // the server's message and error, for error reports
}

// levelRank orders the server's log levels.
var levelRank = map[string]int{
	"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3, "DPANIC": 4, "PANIC": 4, "FATAL": 4,
}

func newServerLog(level string, fwd io.Writer) *serverLog {
	rank, ok := levelRank[strings.ToUpper(level)]
	if !ok {
		rank = levelRank["INFO"]
	}
	return &serverLog{
		minRank:    rank,
		fwd:        fwd,
		split:      lines.NewSplitter(maxLineLength),
		tail:       lines.NewRing(tailLines),
		events:     make([]logEvent, 0, 64),
		registered: make(map[string]time.Time),
		changed:    make(chan struct{}),
	}
}

// Write implements io.Writer. It never fails, so that a slow or failing
// user writer never blocks the server process.
func (l *serverLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.split.Split(b, l.line)
	return len(b), nil
}

// line handles one complete line; l.mu is held.
//
// The server writes "time<TAB>LEVEL<TAB>logger<TAB>caller<TAB>message" and,
// when the line has fields, "<TAB>{json}". Lines of any other shape (a
// panic's stack, for instance) are always forwarded.
func (l *serverLog) line(s string) {
	parts := strings.SplitN(s, "\t", 6)
	if len(parts) >= 5 {
		l.event(parts)
		if rank, ok := levelRank[parts[1]]; ok && rank < l.minRank {
			return
		}
	}
	if l.fwd != nil {
		_, _ = io.WriteString(l.fwd, s+"\n")
	}
	l.tail.Add(s)
}

// event records the line parts as an event if it is one; l.mu is held.
func (l *serverLog) event(parts []string) {
	var kind eventKind
	switch parts[4] {
	case "worker registered":
		kind = evRegistered
	case "assigned job to worker":
		kind = evAssigned
	case "not dispatching agent job since no worker is available", "no worker available to handle job":
		kind = evNotSent
	case "failed to send job request":
		kind = evRequestFailed
	default:
		return
	}
	var fields map[string]any
	if len(parts) == 6 {
		_ = json.Unmarshal([]byte(parts[5]), &fields)
	}
	str := func(k string) string { s, _ := fields[k].(string); return s }
	// A dispatch launches a room job at once and participant or publisher
	// jobs as participants join: only the room job is a dispatch's own.
	if kind != evRegistered && str("jobType") != "JT_ROOM" {
		return
	}
	ev := logEvent{kind: kind, agent: str("agentName"), room: str("room"), reason: parts[4]}
	if e := str("error"); e != "" {
		ev.reason += ": " + e
	}
	l.seq++
	ev.seq = l.seq
	if len(l.events) == maxEvents {
		copy(l.events, l.events[1:])
		l.events = l.events[:maxEvents-1]
	}
	l.events = append(l.events, ev)
	if kind == evRegistered {
		l.registered[ev.agent] = time.Now()
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// mark returns the sequence number of the last event and a channel closed
// at the next one.
func (l *serverLog) mark() (uint64, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.changed
}

// since returns the events after seq (those still kept), and a channel
// closed at the next event.
func (l *serverLog) since(seq uint64) ([]logEvent, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logEvent
	for i := len(l.events) - 1; i >= 0 && l.events[i].seq > seq; i-- {
		out = append(out, l.events[i])
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, l.changed
}

// registeredAt returns when a worker of agent last registered, and a
// channel closed at the next event.
func (l *serverLog) registeredAt(agent string) (time.Time, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.registered[agent]
	return at, ok, l.changed
}

// String returns the last lines forwarded, oldest first, and the
// incomplete last line written.
func (l *serverLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tail.String(l.split.Partial())
}
