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
)

// ProtocolVersion is the version of the protocol between a pool and its job
// processes. The parent passes it in the child's environment and the child
// answers with its own in its hello; a process that speaks another version
// (a binary replaced on disk by another build) is not used.
const ProtocolVersion = 1

// Frames: a 4-byte big-endian length n, then n bytes: one byte of frame
// type and the payload. The payloads of the types that carry the protocol
// module's messages are those messages in protobuf; the others are small
// protobuf-encoded envelopes of this package's own (fields listed with each
// type). Unknown fields are skipped.
const (
	headerLen = 5       // length and type
	maxFrame  = 8 << 20 // the largest n a reader accepts
)

type frameType byte

const (
	// child → parent: 1 version (varint), 2 pid (varint). The child is
	// ready for a job.
	frameHello frameType = 1
	// parent → child: 1 job (livekit.Job), 2 identity, 3 url, 4 token,
	// 5 timing (livekit.JobJoinTiming), 6 age of the timing's base in
	// nanoseconds + 1 (varint; 0: no base), 7 extra (bytes), 8 lowest log
	// level the parent emits (zigzag).
	frameJob frameType = 2
	// parent → child: 1 code, 2 text. Cancel the job's context.
	frameCancel frameType = 3
	// parent → child: 1 sequence number (varint).
	framePing frameType = 4
	// child → parent: 1 the ping's sequence number (varint).
	framePong frameType = 5
	// child → parent, no payload: the job's function is being called.
	frameStarted frameType = 6
	// child → parent: a livekit.UpdateJobStatus.
	frameStatus frameType = 7
	// child → parent: 1 time (unix ns, zigzag), 2 level (zigzag),
	// 3 message, 4 attribute (repeated, see appendAttr).
	frameLog frameType = 8
	// child → parent: 1 kind (varint: 1 success, 2 failure, 3 panic),
	// 2 error or panic value, 3 stack, 4 timing (livekit.JobJoinTiming).
	frameEnd frameType = 9
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
	}
	return fmt.Sprintf("frame type %d", byte(t))
}

// errMalformed wraps every decoding error.
var errMalformed = errors.New("malformed frame")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, args...))
}

// newFrame returns a frame of type t whose payload enc appends.
func newFrame(t frameType, enc func([]byte) []byte) []byte {
	b := make([]byte, headerLen, 64)
	b[4] = byte(t)
	if enc != nil {
		b = enc(b)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
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

// Envelope fields.

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendSintField(b []byte, num protowire.Number, v int64) []byte {
	return appendVarintField(b, num, protowire.EncodeZigZag(v))
}

// appendProtoField appends m, even empty, unless it is nil.
func appendProtoField(b []byte, num protowire.Number, m proto.Message) []byte {
	if m == nil || !m.ProtoReflect().IsValid() {
		return b
	}
	enc, err := proto.Marshal(m)
	if err != nil {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, enc)
}

// field is one decoded envelope field: v for bytes, x for varint and
// fixed64.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   []byte
	x   uint64
}

// fields calls fn with each field of b, in order.
func fields(b []byte, fn func(f field) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return malformed("tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		f := field{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			f.x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed64Type:
			f.x, n = protowire.ConsumeFixed64(b)
		case protowire.Fixed32Type:
			var x uint32
			x, n = protowire.ConsumeFixed32(b)
			f.x = uint64(x)
		case protowire.BytesType:
			f.v, n = protowire.ConsumeBytes(b)
		default:
			return malformed("field %d: wire type %d", num, typ)
		}
		if n < 0 {
			return malformed("field %d: %v", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

func (f field) want(typ protowire.Type) error {
	if f.typ != typ {
		return malformed("field %d: wire type %d, want %d", f.num, f.typ, typ)
	}
	return nil
}

// Messages.

type helloMsg struct {
	version uint64
	pid     int
}

func (m helloMsg) frame() []byte {
	return newFrame(frameHello, func(b []byte) []byte {
		b = appendVarintField(b, 1, m.version)
		return appendVarintField(b, 2, uint64(m.pid))
	})
}

func decodeHello(p []byte) (m helloMsg, err error) {
	err = fields(p, func(f field) error {
		switch f.num {
		case 1:
			m.version = f.x
			return f.want(protowire.VarintType)
		case 2:
			if f.x > math.MaxInt32 {
				return malformed("pid %d", f.x)
			}
			m.pid = int(f.x)
			return f.want(protowire.VarintType)
		}
		return nil
	})
	return m, err
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
}

func (m *jobMsg) frame() []byte {
	return newFrame(frameJob, func(b []byte) []byte {
		b = appendProtoField(b, 1, m.job)
		b = appendStringField(b, 2, m.identity)
		b = appendStringField(b, 3, m.url)
		b = appendStringField(b, 4, m.token)
		b = appendProtoField(b, 5, m.timing)
		if m.hasBase {
			b = appendVarintField(b, 6, uint64(max(m.baseAge, 0))+1)
		}
		b = appendBytesField(b, 7, m.extra)
		return appendSintField(b, 8, int64(m.logLevel))
	})
}

func decodeJob(p []byte) (*jobMsg, error) {
	m := &jobMsg{}
	err := fields(p, func(f field) error {
		switch f.num {
		case 1, 5:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			var msg proto.Message
			if f.num == 1 {
				m.job = &livekit.Job{}
				msg = m.job
			} else {
				m.timing = &livekit.JobJoinTiming{}
				msg = m.timing
			}
			if err := proto.Unmarshal(f.v, msg); err != nil {
				return malformed("field %d: %v", f.num, err)
			}
		case 2, 3, 4:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			s := string(f.v)
			switch f.num {
			case 2:
				m.identity = s
			case 3:
				m.url = s
			default:
				m.token = s
			}
		case 6:
			if f.x == 0 || f.x-1 > math.MaxInt64 {
				return malformed("base age %d", f.x)
			}
			m.hasBase, m.baseAge = true, time.Duration(f.x-1)
			return f.want(protowire.VarintType)
		case 7:
			m.extra = append([]byte(nil), f.v...)
			return f.want(protowire.BytesType)
		case 8:
			m.logLevel = slog.Level(clampInt(protowire.DecodeZigZag(f.x)))
			return f.want(protowire.VarintType)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if m.job == nil {
		return nil, malformed("job frame without a job")
	}
	return m, nil
}

type cancelMsg struct{ code, text string }

func (m cancelMsg) frame() []byte {
	return newFrame(frameCancel, func(b []byte) []byte {
		b = appendStringField(b, 1, m.code)
		return appendStringField(b, 2, m.text)
	})
}

func decodeCancel(p []byte) (m cancelMsg, err error) {
	err = fields(p, func(f field) error {
		switch f.num {
		case 1:
			m.code = string(f.v)
			return f.want(protowire.BytesType)
		case 2:
			m.text = string(f.v)
			return f.want(protowire.BytesType)
		}
		return nil
	})
	return m, err
}

// pingFrame is a ping or a pong.
func pingFrame(t frameType, seq uint64) []byte {
	return newFrame(t, func(b []byte) []byte { return appendVarintField(b, 1, seq) })
}

func decodePing(p []byte) (seq uint64, err error) {
	err = fields(p, func(f field) error {
		if f.num == 1 {
			seq = f.x
			return f.want(protowire.VarintType)
		}
		return nil
	})
	return seq, err
}

func statusFrame(u *livekit.UpdateJobStatus) ([]byte, error) {
	enc, err := proto.Marshal(u)
	if err != nil {
		return nil, err
	}
	return newFrame(frameStatus, func(b []byte) []byte { return append(b, enc...) }), nil
}

func decodeStatus(p []byte) (*livekit.UpdateJobStatus, error) {
	u := &livekit.UpdateJobStatus{}
	if err := proto.Unmarshal(p, u); err != nil {
		return nil, malformed("status: %v", err)
	}
	return u, nil
}

// Kinds of an outcome on the wire.
const (
	outcomeSuccess = 1
	outcomeFailure = 2
	outcomePanic   = 3
)

func (o Outcome) frame() []byte {
	kind := uint64(outcomeSuccess)
	switch {
	case o.Panicked:
		kind = outcomePanic
	case o.Error != "":
		kind = outcomeFailure
	}
	return newFrame(frameEnd, func(b []byte) []byte {
		b = appendVarintField(b, 1, kind)
		b = appendStringField(b, 2, truncate(o.Error, maxText))
		b = appendBytesField(b, 3, o.Stack[:min(len(o.Stack), maxText)])
		b = appendProtoField(b, 4, o.Timing)
		return appendStringField(b, 5, truncate(o.Cause, maxText))
	})
}

// maxText bounds an end's error text and stack on the wire.
const maxText = 64 << 10

func decodeEnd(p []byte) (o Outcome, err error) {
	var kind uint64
	err = fields(p, func(f field) error {
		switch f.num {
		case 1:
			kind = f.x
			return f.want(protowire.VarintType)
		case 2:
			o.Error = string(f.v)
			return f.want(protowire.BytesType)
		case 3:
			o.Stack = append([]byte(nil), f.v...)
			return f.want(protowire.BytesType)
		case 4:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			o.Timing = &livekit.JobJoinTiming{}
			if err := proto.Unmarshal(f.v, o.Timing); err != nil {
				return malformed("end timing: %v", err)
			}
		case 5:
			o.Cause = string(f.v)
			return f.want(protowire.BytesType)
		}
		return nil
	})
	if err != nil {
		return o, err
	}
	switch kind {
	case outcomeSuccess:
		o.Error, o.Stack = "", nil
	case outcomeFailure:
		if o.Error == "" {
			o.Error = "job failed"
		}
	case outcomePanic:
		o.Panicked = true
	default:
		return o, malformed("end kind %d", kind)
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

// Kinds of an attribute's value on the wire. Values of other kinds travel
// as text.
const (
	attrString   = 1
	attrInt      = 2
	attrUint     = 3
	attrFloat    = 4
	attrBool     = 5
	attrDuration = 6
	attrTime     = 7 // RFC 3339 text
	attrGroup    = 8
)

// maxDepth bounds the nesting of groups, when encoding and decoding.
const maxDepth = 16

func (m *logMsg) frame() []byte {
	return newFrame(frameLog, func(b []byte) []byte {
		if !m.time.IsZero() {
			b = appendSintField(b, 1, m.time.UnixNano())
		}
		b = appendSintField(b, 2, int64(m.level))
		b = appendStringField(b, 3, m.msg)
		for _, a := range m.attrs {
			b = appendAttrField(b, 4, a, 0)
		}
		return b
	})
}

// appendAttrField appends a as field num: 1 key, 2 kind (varint),
// 3 text, 4 number (varint; zigzag for ints and durations, 0/1 for bools),
// 5 float (fixed64), 6 member of a group (repeated, nested).
func appendAttrField(b []byte, num protowire.Number, a slog.Attr, depth int) []byte {
	var body []byte
	body = appendStringField(body, 1, a.Key)
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		body = appendVarintField(body, 2, attrString)
		body = appendStringField(body, 3, v.String())
	case slog.KindInt64:
		body = appendVarintField(body, 2, attrInt)
		body = appendSintField(body, 4, v.Int64())
	case slog.KindUint64:
		body = appendVarintField(body, 2, attrUint)
		body = appendVarintField(body, 4, v.Uint64())
	case slog.KindFloat64:
		body = appendVarintField(body, 2, attrFloat)
		body = protowire.AppendTag(body, 5, protowire.Fixed64Type)
		body = protowire.AppendFixed64(body, math.Float64bits(v.Float64()))
	case slog.KindBool:
		body = appendVarintField(body, 2, attrBool)
		if v.Bool() {
			body = appendVarintField(body, 4, 1)
		}
	case slog.KindDuration:
		body = appendVarintField(body, 2, attrDuration)
		body = appendSintField(body, 4, int64(v.Duration()))
	case slog.KindTime:
		body = appendVarintField(body, 2, attrTime)
		body = appendStringField(body, 3, v.Time().Format(time.RFC3339Nano))
	case slog.KindGroup:
		if depth >= maxDepth {
			body = appendVarintField(body, 2, attrString)
			body = appendStringField(body, 3, v.String())
			break
		}
		body = appendVarintField(body, 2, attrGroup)
		for _, m := range v.Group() {
			body = appendAttrField(body, 6, m, depth+1)
		}
	default:
		body = appendVarintField(body, 2, attrString)
		body = appendStringField(body, 3, anyText(v.Any()))
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, body)
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
	m := &logMsg{}
	err := fields(p, func(f field) error {
		switch f.num {
		case 1:
			m.time = time.Unix(0, protowire.DecodeZigZag(f.x))
			return f.want(protowire.VarintType)
		case 2:
			m.level = slog.Level(clampInt(protowire.DecodeZigZag(f.x)))
			return f.want(protowire.VarintType)
		case 3:
			m.msg = string(f.v)
			return f.want(protowire.BytesType)
		case 4:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			a, err := decodeAttr(f.v, 0)
			if err != nil {
				return err
			}
			m.attrs = append(m.attrs, a)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

func decodeAttr(p []byte, depth int) (slog.Attr, error) {
	if depth > maxDepth {
		return slog.Attr{}, malformed("attributes nested deeper than %d", maxDepth)
	}
	var (
		key, text string
		kind, num uint64
		float     float64
		members   []slog.Attr
	)
	err := fields(p, func(f field) error {
		switch f.num {
		case 1:
			key = string(f.v)
			return f.want(protowire.BytesType)
		case 2:
			kind = f.x
			return f.want(protowire.VarintType)
		case 3:
			text = string(f.v)
			return f.want(protowire.BytesType)
		case 4:
			num = f.x
			return f.want(protowire.VarintType)
		case 5:
			float = math.Float64frombits(f.x)
			return f.want(protowire.Fixed64Type)
		case 6:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			a, err := decodeAttr(f.v, depth+1)
			if err != nil {
				return err
			}
			members = append(members, a)
		}
		return nil
	})
	if err != nil {
		return slog.Attr{}, err
	}
	switch kind {
	case attrInt:
		return slog.Int64(key, protowire.DecodeZigZag(num)), nil
	case attrUint:
		return slog.Uint64(key, num), nil
	case attrFloat:
		return slog.Float64(key, float), nil
	case attrBool:
		return slog.Bool(key, num != 0), nil
	case attrDuration:
		return slog.Duration(key, time.Duration(protowire.DecodeZigZag(num))), nil
	case attrTime:
		if t, err := time.Parse(time.RFC3339Nano, text); err == nil {
			return slog.Time(key, t), nil
		}
		return slog.String(key, text), nil
	case attrGroup:
		return slog.Attr{Key: key, Value: slog.GroupValue(members...)}, nil
	}
	return slog.String(key, text), nil
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
// helloMsg, *jobMsg, cancelMsg, uint64 (ping, pong), nil (started),
// *livekit.UpdateJobStatus, *logMsg, Outcome.
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
	case frameStarted:
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
