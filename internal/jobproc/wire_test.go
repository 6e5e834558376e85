package jobproc

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/proto"
)

// seedFrames are one frame of each type.
func seedFrames() [][]byte {
	status, _ := statusFrame(&livekit.UpdateJobStatus{JobId: "AJ_1", Status: livekit.JobStatus_JS_RUNNING,
		JoinTiming: &livekit.JobJoinTiming{ConnectedUs: 5}})
	return [][]byte{
		helloMsg{version: ProtocolVersion, pid: 4242}.frame(),
		(&jobMsg{job: &livekit.Job{Id: "AJ_1", Metadata: "m", Room: &livekit.Room{Name: "r"}}, identity: "i",
			url: "ws://x", token: "t", timing: &livekit.JobJoinTiming{AcceptedUs: 3}, hasBase: true,
			baseAge: time.Second, extra: []byte{1, 2}, logLevel: slog.LevelDebug,
			trace: [2]string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "k=v"}}).frame(),
		cancelMsg{code: "terminated", text: "by server"}.frame(),
		pingFrame(framePing, 7),
		pingFrame(framePong, 7),
		newFrame(frameStarted, nil),
		status,
		(&logMsg{time: time.Unix(1700000000, 5), level: slog.LevelWarn, msg: "hello", attrs: []slog.Attr{
			slog.String("s", "v"), slog.Int("i", -3), slog.Uint64("u", math.MaxUint64), slog.Float64("f", 2.5),
			slog.Bool("b", true), slog.Duration("d", time.Millisecond), slog.Time("t", time.Unix(5, 6).UTC()),
			slog.Group("g", slog.String("k", "v"), slog.Group("h", slog.Int("z", 1))), slog.Any("e", errors.New("x")),
		}}).frame(),
		Outcome{Error: "boom"}.frame(),
		Outcome{Error: "v", Panicked: true, Stack: []byte("stack"), Timing: &livekit.JobJoinTiming{ConnectedUs: 1}, Cause: "shutdown", CauseText: "done"}.frame(),
		Success().frame(),
		newFrame(frameReported, nil),
	}
}

// Every message survives encoding and decoding.
func TestFrameRoundTrip(t *testing.T) {
	var stream []byte
	for _, f := range seedFrames() {
		stream = append(stream, f...)
	}
	fr := newFrameReader(bytes.NewReader(stream))
	var got []any
	for {
		typ, p, err := fr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		m, err := decodeFrame(typ, p)
		if err != nil {
			t.Fatalf("%v: %v", typ, err)
		}
		got = append(got, m)
	}
	if len(got) != len(seedFrames()) {
		t.Fatalf("%d frames", len(got))
	}
	if h := got[0].(helloMsg); h.version != ProtocolVersion || h.pid != 4242 {
		t.Errorf("hello %+v", h)
	}
	j := got[1].(*jobMsg)
	if j.job.GetId() != "AJ_1" || j.identity != "i" || j.url != "ws://x" || j.token != "t" || j.timing.GetAcceptedUs() != 3 ||
		!j.hasBase || j.baseAge != time.Second || !bytes.Equal(j.extra, []byte{1, 2}) || j.logLevel != slog.LevelDebug ||
		j.trace != [2]string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "k=v"} {
		t.Errorf("job %+v", j)
	}
	if c := got[2].(cancelMsg); c.code != "terminated" || c.text != "by server" {
		t.Errorf("cancel %+v", c)
	}
	if got[3].(uint64) != 7 || got[4].(uint64) != 7 || got[5] != nil {
		t.Error("ping, pong, started")
	}
	if u := got[6].(*livekit.UpdateJobStatus); u.GetJoinTiming().GetConnectedUs() != 5 {
		t.Errorf("status %v", u)
	}
	l := got[7].(*logMsg)
	want := []slog.Attr{
		slog.String("s", "v"), slog.Int64("i", -3), slog.Uint64("u", math.MaxUint64), slog.Float64("f", 2.5),
		slog.Bool("b", true), slog.Duration("d", time.Millisecond), slog.Time("t", time.Unix(5, 6).UTC()),
		slog.Group("g", slog.String("k", "v"), slog.Group("h", slog.Int64("z", 1))), slog.String("e", "x"),
	}
	if !l.time.Equal(time.Unix(1700000000, 5)) || l.level != slog.LevelWarn || l.msg != "hello" || len(l.attrs) != len(want) {
		t.Fatalf("log %+v", l)
	}
	for i := range want {
		if !l.attrs[i].Equal(want[i]) {
			t.Errorf("attr %d: %v, want %v", i, l.attrs[i], want[i])
		}
	}
	if o := got[8].(Outcome); o.Error != "boom" || o.Panicked {
		t.Errorf("failure %+v", o)
	}
	if o := got[9].(Outcome); !o.Panicked || o.Error != "v" || string(o.Stack) != "stack" || o.Timing.GetConnectedUs() != 1 || o.Cause != "shutdown" || o.CauseText != "done" {
		t.Errorf("panic %+v", o)
	}
	if o := got[10].(Outcome); !reflect.DeepEqual(o, Outcome{}) {
		t.Errorf("success %+v", o)
	}
	if len(got) != 12 || got[11] != nil {
		t.Errorf("%d frames, the last %v; want 12, the last the reported frame (no message)", len(got), got[len(got)-1])
	}
}

// Malformed input is an error, never a panic or a large allocation.
func TestFrameMalformed(t *testing.T) {
	for name, in := range map[string][]byte{
		"zero length":      {0, 0, 0, 0},
		"huge length":      {0x7f, 0xff, 0xff, 0xff, 1},
		"cut header":       {0, 0, 0, 5},
		"cut payload":      {0, 0, 0, 5, byte(frameLog), 1},
		"bad tag":          {0, 0, 0, 2, byte(frameHello), 0xff},
		"group wire type":  {0, 0, 0, 2, byte(frameHello), 0x0b},
		"wrong wire type":  {0, 0, 0, 3, byte(frameHello), 0x0a, 0},
		"unknown type":     {0, 0, 0, 1, 200},
		"job without job":  {0, 0, 0, 1, byte(frameJob)},
		"end without kind": {0, 0, 0, 1, byte(frameEnd)},
		"bad status":       {0, 0, 0, 2, byte(frameStatus), 0xff},
	} {
		fr := newFrameReader(bytes.NewReader(in))
		typ, p, err := fr.next()
		if err == nil {
			_, err = decodeFrame(typ, p)
		}
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// Deep groups are cut when encoding, refused when decoding.
	a := slog.String("leaf", "x")
	for range 3 * maxDepth {
		a = slog.Group("g", a)
	}
	b := (&logMsg{msg: "deep", attrs: []slog.Attr{a}}).frame()
	typ, p, err := newFrameReader(bytes.NewReader(b)).next()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeFrame(typ, p); err != nil {
		t.Errorf("a deep group as the encoder cuts it: %v", err)
	}
}

// FuzzFrame reads frames from input another process could send.
func FuzzFrame(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s)
	}
	var all []byte
	for _, s := range seedFrames() {
		all = append(all, s...)
	}
	f.Add(all)
	f.Fuzz(func(t *testing.T, in []byte) {
		fr := newFrameReader(bytes.NewReader(in))
		for {
			typ, p, err := fr.next()
			if err != nil {
				return
			}
			if len(p) > len(in) {
				t.Fatalf("payload of %d bytes from %d of input", len(p), len(in))
			}
			m, err := decodeFrame(typ, p)
			if err != nil {
				continue
			}
			// What decodes re-encodes to something that decodes the same.
			var again []byte
			switch m := m.(type) {
			case helloMsg:
				again = m.frame()
			case *jobMsg:
				again = m.frame()
			case cancelMsg:
				again = m.frame()
			case *livekit.UpdateJobStatus:
				again, _ = statusFrame(m)
			case Outcome:
				again = m.frame()
			default:
				continue
			}
			t2, p2, err := newFrameReader(bytes.NewReader(again)).next()
			if err != nil {
				t.Fatalf("re-encoded %v does not read: %v", typ, err)
			}
			m2, err := decodeFrame(t2, p2)
			if err != nil {
				t.Fatalf("re-encoded %v does not decode: %v", typ, err)
			}
			if !same(m, m2) {
				t.Fatalf("%v: %+v became %+v", typ, m, m2)
			}
		}
	})
}

func same(a, b any) bool {
	switch a := a.(type) {
	case *jobMsg:
		b := b.(*jobMsg)
		return proto.Equal(a.job, b.job) && proto.Equal(a.timing, b.timing) && a.identity == b.identity &&
			a.url == b.url && a.token == b.token && a.hasBase == b.hasBase && a.baseAge == b.baseAge &&
			bytes.Equal(a.extra, b.extra) && a.logLevel == b.logLevel && a.trace == b.trace
	case *livekit.UpdateJobStatus:
		return proto.Equal(a, b.(*livekit.UpdateJobStatus))
	case Outcome:
		b := b.(Outcome)
		return a.Error == b.Error && a.Panicked == b.Panicked && bytes.Equal(a.Stack, b.Stack) && proto.Equal(a.Timing, b.Timing)
	}
	return reflect.DeepEqual(a, b)
}

// Text travels byte for byte, valid UTF-8 or not; fields of unknown numbers
// are skipped; a known field with another wire type is refused, at any
// depth of this package's messages.
func TestFrameDecodeRules(t *testing.T) {
	bad := "caf\xe9 \xff"
	b := (&logMsg{level: slog.LevelInfo, msg: bad, attrs: []slog.Attr{
		slog.String(bad, bad), slog.Group("g", slog.String("k", bad)),
	}}).frame()
	typ, p, err := newFrameReader(bytes.NewReader(b)).next()
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeFrame(typ, p)
	if err != nil {
		t.Fatalf("log with text that is not UTF-8: %v", err)
	}
	l := m.(*logMsg)
	if l.msg != bad || l.attrs[0].Key != bad || l.attrs[0].Value.String() != bad ||
		l.attrs[1].Value.Group()[0].Value.String() != bad {
		t.Errorf("log %+v: text changed on the way", l)
	}
	b = Outcome{Error: bad}.frame()
	typ, p, _ = newFrameReader(bytes.NewReader(b)).next()
	if m, err := decodeFrame(typ, p); err != nil || m.(Outcome).Error != bad {
		t.Errorf("end with an error that is not UTF-8: %+v, %v", m, err)
	}

	for _, tc := range []struct {
		name    string
		typ     frameType
		payload []byte
		ok      bool
	}{
		// hello: field 1 version 2, then field 9 (unknown) varint 5.
		{"unknown field skipped", frameHello, []byte{0x08, 0x02, 0x48, 0x05}, true},
		// hello: field 1 as bytes.
		{"known field, other wire type", frameHello, []byte{0x0a, 0x00}, false},
		// log: field 4 (attr) holding field 3 (int) as bytes.
		{"nested known field, other wire type", frameLog, []byte{0x22, 0x02, 0x1a, 0x00}, false},
		// log: field 4 (attr) holding field 20 (unknown) varint.
		{"nested unknown field skipped", frameLog, []byte{0x22, 0x03, 0xa0, 0x01, 0x01}, true},
	} {
		_, err := decodeFrame(tc.typ, tc.payload)
		if (err == nil) != tc.ok {
			t.Errorf("%s: error %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errMalformed) {
			t.Errorf("%s: error %v does not wrap errMalformed", tc.name, err)
		}
	}
}
