package faultproxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

type frameEvent struct {
	fromClient bool
	opcode     int
	payload    string
}

func (e frameEvent) String() string {
	return fmt.Sprintf("{client=%v op=%d %d bytes %.16q}", e.fromClient, e.opcode, len(e.payload), e.payload)
}

// frame encodes one frame; a non-nil key masks it.
func frame(fin bool, rsv byte, opcode int, payload []byte, key []byte) []byte {
	b0 := rsv<<4 | byte(opcode)
	if fin {
		b0 |= 0x80
	}
	var maskBit byte
	if key != nil {
		maskBit = 0x80
	}
	out := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		out = append(out, maskBit|byte(n))
	case n <= 0xffff:
		out = append(out, maskBit|126)
		out = binary.BigEndian.AppendUint16(out, uint16(n))
	default:
		out = append(out, maskBit|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	if key == nil {
		return append(out, payload...)
	}
	out = append(out, key...)
	for i, c := range payload {
		out = append(out, c^key[i%4])
	}
	return out
}

func collect(fromClient bool) (*frameParser, *[]frameEvent) {
	var got []frameEvent
	f := &frameParser{fromClient: fromClient, emit: func(fc bool, op int, p []byte) {
		got = append(got, frameEvent{fc, op, string(p)})
	}}
	return f, &got
}

func equalEvents(a, b []frameEvent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFrameParser(t *testing.T) {
	key := []byte{0xa1, 0xb2, 0xc3, 0xd4}
	mid := bytes.Repeat([]byte("m"), 300)
	large := bytes.Repeat([]byte("L"), 70000)
	for _, fromClient := range []bool{true, false} {
		k := key
		if !fromClient {
			k = nil
		}
		var stream []byte
		add := func(fin bool, op int, p []byte) { stream = append(stream, frame(fin, 0, op, p, k)...) }
		add(true, opText, []byte("hello"))
		add(true, opBinary, nil)
		add(true, opBinary, mid)
		add(false, opBinary, []byte("fr"))
		add(true, opPing, []byte("ping"))
		add(false, opContinuation, []byte("ag"))
		add(true, opPong, nil)
		add(true, opContinuation, []byte("ments"))
		add(true, opBinary, large)
		stream = append(stream, frame(true, 4, opText, []byte("rsv1 kept"), k)...)
		add(true, opClose, []byte{0x03, 0xe8})
		want := []frameEvent{
			{fromClient, opText, "hello"},
			{fromClient, opBinary, ""},
			{fromClient, opBinary, string(mid)},
			{fromClient, opPing, "ping"},
			{fromClient, opPong, ""},
			{fromClient, opBinary, "fragments"},
			{fromClient, opBinary, string(large)},
			{fromClient, opText, "rsv1 kept"},
			{fromClient, opClose, "\x03\xe8"},
		}

		// Whole, in two pieces split anywhere, and byte by byte.
		f, got := collect(fromClient)
		f.feed(stream)
		if !equalEvents(*got, want) {
			t.Fatalf("fromClient=%v whole: got %v, want %v", fromClient, *got, want)
		}
		for cut := 0; cut <= len(stream); cut += 1 + cut/8 {
			f, got := collect(fromClient)
			orig := append([]byte(nil), stream...)
			f.feed(stream[:cut])
			f.feed(stream[cut:])
			if !equalEvents(*got, want) {
				t.Fatalf("fromClient=%v split at %d: got %v, want %v", fromClient, cut, *got, want)
			}
			if !bytes.Equal(stream, orig) {
				t.Fatal("the parser changed the bytes it was fed")
			}
		}
		f, got = collect(fromClient)
		for i := range stream {
			f.feed(stream[i : i+1])
		}
		if !equalEvents(*got, want) {
			t.Fatalf("fromClient=%v byte by byte: got %v, want %v", fromClient, *got, want)
		}
		if len(f.buf) != 0 || f.inMsg || f.failed {
			t.Fatalf("parser state after the stream: %d bytes left, inMsg %v, failed %v", len(f.buf), f.inMsg, f.failed)
		}
	}
}

func TestFrameParserErrors(t *testing.T) {
	good := frame(true, 0, opText, []byte("ok"), nil)
	long := make([]byte, 10)
	long[0], long[1] = 0x82, 127
	binary.BigEndian.PutUint64(long[2:], maxMessage+1)
	for name, bad := range map[string][]byte{
		"reserved data opcode":       frame(true, 0, 3, []byte("x"), nil),
		"reserved control opcode":    frame(true, 0, 0xb, []byte("x"), nil),
		"continuation without start": frame(true, 0, opContinuation, []byte("x"), nil),
		"data inside a fragmented":   append(frame(false, 0, opText, []byte("a"), nil), frame(true, 0, opText, []byte("b"), nil)...),
		"fragmented control":         frame(false, 0, opPing, []byte("x"), nil),
		"control too long":           frame(true, 0, opPing, bytes.Repeat([]byte("x"), 126), nil),
		"length too large":           long,
	} {
		t.Run(name, func(t *testing.T) {
			f, got := collect(false)
			f.feed(good)
			f.feed(bad)
			f.feed(good) // ignored after the error
			if !f.failed {
				t.Fatal("no parse error")
			}
			if want := []frameEvent{{false, opText, "ok"}}; !equalEvents(*got, want) {
				t.Fatalf("got %v, want %v", *got, want)
			}
		})
	}
}

func TestFrameParserMessageLimit(t *testing.T) {
	f, got := collect(false)
	f.feed(frame(false, 0, opBinary, []byte("x"), nil))
	f.msg = make([]byte, maxMessage-1, maxMessage+8) // as if fed
	f.feed(frame(false, 0, opContinuation, []byte("y"), nil))
	if f.failed {
		t.Fatalf("a message of exactly %d bytes stopped the tap", maxMessage)
	}
	f.feed(frame(true, 0, opContinuation, []byte("z"), nil))
	if !f.failed {
		t.Fatalf("a message over %d bytes did not stop the tap", maxMessage)
	}
	if len(*got) != 0 {
		t.Fatalf("emitted %d messages", len(*got))
	}
	if f.msg != nil || f.buf != nil {
		t.Fatal("the parser holds on to memory after failing")
	}
}
