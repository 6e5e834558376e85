package jobproc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"time"

	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/lkagent/lkagent/internal/jobproc/jobprocpb"
)

// ProtocolVersion is the version of the protocol between a pool and its job
// processes. The parent passes it in the child's environment and the child
// answers with its own in its hello; a process that speaks another version
// (a binary replaced on disk by another build) is not used.
const ProtocolVersion = 3

// Frames: a 4-byte big-endian length n, then n bytes: one byte of frame
// type and the payload, a protobuf message: one of package jobprocpb's
// (generated from jobprocpb/jobproc.proto), or a livekit.UpdateJobStatus.
// Fields of numbers the reader does not know are skipped.
const (
	headerLen = 5       // length and type
	maxFrame  = 8 << 20 // the largest n a reader accepts
)

type frameType byte

const (
	// child → parent, jobprocpb.Hello: the child is ready for a job.
	frameHello frameType = 1
	// parent → child, jobprocpb.Job: the job to run.
	frameJob frameType = 2
	// parent → child, jobprocpb.Cancel: cancel the job's context.
	frameCancel frameType = 3
	// parent → child, jobprocpb.Ping.
	framePing frameType = 4
	// child → parent, jobprocpb.Ping: the ping's sequence number.
	framePong frameType = 5
	// child → parent, no payload: the job's function is being called.
	frameStarted frameType = 6
	// child → parent: a livekit.UpdateJobStatus.
	frameStatus frameType = 7
	// child → parent, jobprocpb.Log: a record of the job's log.
	frameLog frameType = 8
	// child → parent, jobprocpb.End: how the job's function ended.
	frameEnd frameType = 9
	// parent → child, no payload: the parent has passed the job's end on
	// (to the server); the child may leave the job's room.
	frameReported frameType = 10
)

func (t frameType) String() string {
	switch t {
	case frameHello:
		return "hello"
	case frameJob:
		return "job"
	case frameCancel:
		return "cancel"
	case framePing:
		return "ping"
	case framePong:
		return "pong"
	case frameStarted:
		return "started"
	case frameStatus:
		return "status"
	case frameLog:
		return "log"
	case frameEnd:
		return "end"
	case frameReported:
		return "reported"
	}
	return fmt.Sprintf("frame type %d", byte(t))
}

// errMalformed wraps every decoding error.
var errMalformed = errors.New("malformed frame")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, args...))
}

// newFrame returns a frame of type t whose payload is m (none if m is nil).
//
// Encoding cannot fail for this package's messages: their text is bytes,
// and the only strings are in the livekit messages they carry, which were
// decoded from protobuf (that refuses strings that are not UTF-8) or built
// by this program. Should it fail, the payload is left empty, and the
// receiver refuses the frame (a job without a job, an end without a kind)
// or reads zero values.
func newFrame(t frameType, m proto.Message) []byte {
	b, err := encodeFrame(t, m)
	if err != nil {
		b, _ = encodeFrame(t, nil)
	}
	return b
}

// encodeFrame returns a frame of type t whose payload is m (none if m is
// nil), or the error encoding m.
func encodeFrame(t frameType, m proto.Message) ([]byte, error) {
	b := make([]byte, headerLen, 64)
	b[4] = byte(t)
	if m != nil {
		var err error
		if b, err = (proto.MarshalOptions{}).MarshalAppend(b, m); err != nil {
			return nil, err
		}
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b, nil
}

// frameReader reads frames from a stream.
type frameReader struct {
	r   io.Reader
	hdr [headerLen]byte
	buf []byte
}

func newFrameReader(r io.Reader) *frameReader { return &frameReader{r: r} }

// next reads one frame. The payload is valid until the next call. A
// stream that ends between frames returns io.EOF; one that ends inside a
// frame io.ErrUnexpectedEOF; a bad length an error wrapping errMalformed.
func (fr *frameReader) next() (frameType, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:4]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(fr.hdr[:4])
	if n < 1 || n > maxFrame {
		return 0, nil, malformed("frame length %d", n)
	}
	if _, err := io.ReadFull(fr.r, fr.hdr[4:]); err != nil {
		return 0, nil, unexpected(err)
	}
	size := int(n) - 1
	// Grow the buffer as the bytes arrive, not by what the length claims,
	// so that a lying length costs no more memory than the bytes sent.
	fr.buf = fr.buf[:0]
	for len(fr.buf) < size {
		chunk := min(size-len(fr.buf), 64<<10)
		if cap(fr.buf)-len(fr.buf) < chunk {
			nb := make([]byte, len(fr.buf), max(2*cap(fr.buf), len(fr.buf)+chunk))
			copy(nb, fr.buf)
			fr.buf = nb
		}
		start := len(fr.buf)
		fr.buf = fr.buf[:start+chunk]
		if _, err := io.ReadFull(fr.r, fr.buf[start:]); err != nil {
			return 0, nil, unexpected(err)
		}
	}
	// Do not keep a large buffer for the process's lifetime.
	payload := fr.buf
	if cap(fr.buf) > 1<<20 {
		fr.buf = nil
	}
	return frameType(fr.hdr[4]), payload, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Decoding.

// maxDepth bounds the nesting of groups in a log record, when encoding and
// decoding.
const maxDepth = 16

// unmarshal decodes p into m. Besides what protobuf refuses, it refuses a
// field of a known number that came with another wire type (protobuf would
// keep it as an unknown field and read the field as unset): that is a
// corrupt frame, not a newer sender.
func unmarshal(p []byte, m proto.Message) error {
	// Every group level is two messages deep (Attr, Group), below Log.
	opts := proto.UnmarshalOptions{RecursionLimit: 2*maxDepth + 8}
	if err := opts.Unmarshal(p, m); err != nil {
		return malformed("%s: %v", m.ProtoReflect().Descriptor().Name(), err)
	}
	return checkWireTypes(m.ProtoReflect())
}

// checkWireTypes walks m and this package's messages within it (not the
// livekit ones, which are read as protobuf reads them).
func checkWireTypes(m protoreflect.Message) error {
	fields := m.Descriptor().Fields()
	for b := m.GetUnknown(); len(b) > 0; {
		num, typ, n := protowire.ConsumeField(b)
		if n < 0 {
			return malformed("%s: %v", m.Descriptor().Name(), protowire.ParseError(n))
		}
		if fields.ByNumber(num) != nil {
			return malformed("%s field %d: wire type %d", m.Descriptor().Name(), num, typ)
		}
		b = b[n:]
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil || fd.Message().ParentFile().Package() != m.Descriptor().ParentFile().Package() {
			return true
		}
		if fd.IsList() {
			for i := range v.List().Len() {
				if err = checkWireTypes(v.List().Get(i).Message()); err != nil {
					return false
				}
			}
			return true
		}
		err = checkWireTypes(v.Message())
		return err == nil
	})
	return err
}

// Messages.

type helloMsg struct {
	version uint64
	pid     int
}

func (m helloMsg) frame() []byte {
	return newFrame(frameHello, &jobprocpb.Hello{Version: m.version, Pid: uint64(m.pid)})
}

func decodeHello(p []byte) (helloMsg, error) {
	var h jobprocpb.Hello
	if err := unmarshal(p, &h); err != nil {
		return helloMsg{}, err
	}
	if h.GetPid() > math.MaxInt32 {
		return helloMsg{}, malformed("pid %d", h.GetPid())
	}
	return helloMsg{version: h.GetVersion(), pid: int(h.GetPid())}, nil
}

type jobMsg struct {
	job      *livekit.Job
	identity string
	url      string
	token    string
	timing   *livekit.JobJoinTiming
	baseAge  time.Duration // how long ago the timing's base was, when sent
	hasBase  bool
	extra    []byte
	logLevel slog.Level
	trace    [2]string // traceparent, tracestate
}

func (m *jobMsg) frame() []byte {
	j := &jobprocpb.Job{
		Job:      m.job,
		Identity: []byte(m.identity),
		Url:      []byte(m.url),
		Token:    []byte(m.token),
		Timing:   m.timing,
		Extra:    m.extra,
		LogLevel: int64(m.logLevel),
	}
	if m.trace != [2]string{} {
		j.Traceparent, j.Tracestate = []byte(m.trace[0]), []byte(m.trace[1])
	}
	if m.hasBase {
		j.BaseAgeNs = proto.Int64(int64(max(m.baseAge, 0)))
	}
	return newFrame(frameJob, j)
}

func decodeJob(p []byte) (*jobMsg, error) {
	var j jobprocpb.Job
	if err := unmarshal(p, &j); err != nil {
		return nil, err
	}
	if j.GetJob() == nil {
		return nil, malformed("job frame without a job")
	}
	m := &jobMsg{
		job:      j.GetJob(),
		identity: string(j.GetIdentity()),
		url:      string(j.GetUrl()),
		token:    string(j.GetToken()),
		timing:   j.GetTiming(),
		extra:    j.GetExtra(),
		logLevel: slog.Level(clampInt(j.GetLogLevel())),
		trace:    [2]string{string(j.GetTraceparent()), string(j.GetTracestate())},
	}
	if j.BaseAgeNs != nil {
		if j.GetBaseAgeNs() < 0 {
			return nil, malformed("base age %d", j.GetBaseAgeNs())
		}
		m.hasBase, m.baseAge = true, time.Duration(j.GetBaseAgeNs())
	}
	return m, nil
}

type cancelMsg struct{ code, text string }

func (m cancelMsg) frame() []byte {
	return newFrame(frameCancel, &jobprocpb.Cancel{Code: []byte(m.code), Text: []byte(m.text)})
}

func decodeCancel(p []byte) (cancelMsg, error) {
	var c jobprocpb.Cancel
	if err := unmarshal(p, &c); err != nil {
		return cancelMsg{}, err
	}
	return cancelMsg{code: string(c.GetCode()), text: string(c.GetText())}, nil
}

// pingFrame is a ping or a pong.
func pingFrame(t frameType, seq uint64) []byte {
	return newFrame(t, &jobprocpb.Ping{Seq: seq})
}

func decodePing(p []byte) (uint64, error) {
	var m jobprocpb.Ping
	if err := unmarshal(p, &m); err != nil {
		return 0, err
	}
	return m.GetSeq(), nil
}

// statusFrame encodes u, whose error text is the job's: unlike this
// package's messages, it can fail to encode (text that is not UTF-8).
func statusFrame(u *livekit.UpdateJobStatus) ([]byte, error) {
	return encodeFrame(frameStatus, u)
}

func decodeStatus(p []byte) (*livekit.UpdateJobStatus, error) {
	u := &livekit.UpdateJobStatus{}
	if err := proto.Unmarshal(p, u); err != nil {
		return nil, malformed("status: %v", err)
	}
	return u, nil
}

func (o Outcome) frame() []byte {
	e := &jobprocpb.End{
		Kind:      jobprocpb.End_KIND_SUCCESS,
		Error:     []byte(truncate(o.Error, maxText)),
		Stack:     o.Stack[:min(len(o.Stack), maxText)],
		Timing:    o.Timing,
		Cause:     []byte(truncate(o.Cause, maxText)),
		CauseText: []byte(truncate(o.CauseText, maxText)),
	}
	switch {
	case o.Panicked:
		e.Kind = jobprocpb.End_KIND_PANIC
	case o.Error != "":
		e.Kind = jobprocpb.End_KIND_FAILURE
	}
	return newFrame(frameEnd, e)
}

// maxText bounds an end's error text and stack on the wire.
const maxText = 64 << 10

func decodeEnd(p []byte) (Outcome, error) {
	var e jobprocpb.End
	if err := unmarshal(p, &e); err != nil {
		return Outcome{}, err
	}
	o := Outcome{Error: string(e.GetError()), Stack: e.GetStack(), Timing: e.GetTiming(), Cause: string(e.GetCause()),
		CauseText: string(e.GetCauseText())}
	switch e.GetKind() {
	case jobprocpb.End_KIND_SUCCESS:
		o.Error, o.Stack = "", nil
	case jobprocpb.End_KIND_FAILURE:
		if o.Error == "" {
			o.Error = "job failed"
		}
	case jobprocpb.End_KIND_PANIC:
		o.Panicked = true
	default:
		return o, malformed("end kind %d", e.GetKind())
	}
	return o, nil
}

// Log records.

type logMsg struct {
	time  time.Time
	level slog.Level
	msg   string
	attrs []slog.Attr
}

func (m *logMsg) frame() []byte {
	l := &jobprocpb.Log{Level: int64(m.level), Message: []byte(m.msg), Attrs: make([]*jobprocpb.Attr, len(m.attrs))}
	if !m.time.IsZero() {
		l.TimeUnixNano = proto.Int64(m.time.UnixNano())
	}
	for i, a := range m.attrs {
		l.Attrs[i] = attrToWire(a, 0)
	}
	return newFrame(frameLog, l)
}

// attrToWire converts a; groups deeper than maxDepth travel as text.
func attrToWire(a slog.Attr, depth int) *jobprocpb.Attr {
	w := &jobprocpb.Attr{Key: []byte(a.Key)}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		w.Value = &jobprocpb.Attr_Text{Text: []byte(v.String())}
	case slog.KindInt64:
		w.Value = &jobprocpb.Attr_Int{Int: v.Int64()}
	case slog.KindUint64:
		w.Value = &jobprocpb.Attr_Uint{Uint: v.Uint64()}
	case slog.KindFloat64:
		w.Value = &jobprocpb.Attr_Float{Float: v.Float64()}
	case slog.KindBool:
		w.Value = &jobprocpb.Attr_Bool{Bool: v.Bool()}
	case slog.KindDuration:
		w.Value = &jobprocpb.Attr_DurationNs{DurationNs: int64(v.Duration())}
	case slog.KindTime:
		w.Value = &jobprocpb.Attr_Time{Time: v.Time().Format(time.RFC3339Nano)}
	case slog.KindGroup:
		if depth >= maxDepth {
			w.Value = &jobprocpb.Attr_Text{Text: []byte(v.String())}
			break
		}
		g := &jobprocpb.Group{Attrs: make([]*jobprocpb.Attr, len(v.Group()))}
		for i, m := range v.Group() {
			g.Attrs[i] = attrToWire(m, depth+1)
		}
		w.Value = &jobprocpb.Attr_Group{Group: g}
	default:
		w.Value = &jobprocpb.Attr_Text{Text: []byte(anyText(v.Any()))}
	}
	return w
}

// anyText is how a value of no other kind travels.
func anyText(v any) (s string) {
	defer func() {
		if recover() != nil {
			s = fmt.Sprintf("%T (its formatting panicked)", v)
		}
	}()
	if err, ok := v.(error); ok {
		return err.Error()
	}
	return fmt.Sprintf("%+v", v)
}

func decodeLog(p []byte) (*logMsg, error) {
	var l jobprocpb.Log
	if err := unmarshal(p, &l); err != nil {
		return nil, err
	}
	m := &logMsg{level: slog.Level(clampInt(l.GetLevel())), msg: string(l.GetMessage())}
	if l.TimeUnixNano != nil {
		m.time = time.Unix(0, l.GetTimeUnixNano())
	}
	for _, w := range l.GetAttrs() {
		a, err := attrFromWire(w, 0)
		if err != nil {
			return nil, err
		}
		m.attrs = append(m.attrs, a)
	}
	return m, nil
}

func attrFromWire(w *jobprocpb.Attr, depth int) (slog.Attr, error) {
	if depth > maxDepth {
		return slog.Attr{}, malformed("attributes nested deeper than %d", maxDepth)
	}
	key := string(w.GetKey())
	switch v := w.GetValue().(type) {
	case *jobprocpb.Attr_Int:
		return slog.Int64(key, v.Int), nil
	case *jobprocpb.Attr_Uint:
		return slog.Uint64(key, v.Uint), nil
	case *jobprocpb.Attr_Float:
		return slog.Float64(key, v.Float), nil
	case *jobprocpb.Attr_Bool:
		return slog.Bool(key, v.Bool), nil
	case *jobprocpb.Attr_DurationNs:
		return slog.Duration(key, time.Duration(v.DurationNs)), nil
	case *jobprocpb.Attr_Time:
		if t, err := time.Parse(time.RFC3339Nano, v.Time); err == nil {
			return slog.Time(key, t), nil
		}
		return slog.String(key, v.Time), nil
	case *jobprocpb.Attr_Group:
		members := make([]slog.Attr, 0, len(v.Group.GetAttrs()))
		for _, mw := range v.Group.GetAttrs() {
			a, err := attrFromWire(mw, depth+1)
			if err != nil {
				return slog.Attr{}, err
			}
			members = append(members, a)
		}
		return slog.Attr{Key: key, Value: slog.GroupValue(members...)}, nil
	}
	return slog.String(key, string(w.GetText())), nil
}

func clampInt(v int64) int {
	return int(max(min(v, math.MaxInt32), math.MinInt32))
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// decodeFrame decodes the payload of a frame of type t into its message:
// helloMsg, *jobMsg, cancelMsg, uint64 (ping, pong), nil (started,
// reported), *livekit.UpdateJobStatus, *logMsg, Outcome.
func decodeFrame(t frameType, p []byte) (any, error) {
	switch t {
	case frameHello:
		return decodeHello(p)
	case frameJob:
		return decodeJob(p)
	case frameCancel:
		return decodeCancel(p)
	case framePing, framePong:
		return decodePing(p)
	case frameStarted, frameReported:
		return nil, nil
	case frameStatus:
		return decodeStatus(p)
	case frameLog:
		return decodeLog(p)
	case frameEnd:
		return decodeEnd(p)
	}
	return nil, malformed("unknown frame type %d", byte(t))
}
