package faultproxy

import (
	"encoding/binary"
	"errors"
)

// WebSocket opcodes (RFC 6455, section 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// maxMessage bounds a tapped message; a larger one stops the tap.
const maxMessage = 64 << 20

var errFrame = errors.New("faultproxy: malformed WebSocket stream")

// frameParser turns one direction of a WebSocket stream, fed in pieces,
// into messages. It keeps its own copy of the bytes.
type frameParser struct {
	fromClient bool
	emit       func(fromClient bool, opcode int, payload []byte)

	buf    []byte // bytes not parsed yet
	inMsg  bool   // a fragmented data message is in progress
	msgOp  int
	msg    []byte
	failed bool
}

// feed parses p, calling emit for every complete message. After a parse
// error it ignores everything.
func (f *frameParser) feed(p []byte) {
	if f.failed || len(p) == 0 {
		return
	}
	f.buf = append(f.buf, p...)
	consumed := 0
	for {
		n, err := f.frame(f.buf[consumed:])
		if err != nil {
			f.failed = true
			f.buf, f.msg = nil, nil
			return
		}
		if n == 0 {
			break
		}
		consumed += n
	}
	rest := copy(f.buf, f.buf[consumed:])
	f.buf = f.buf[:rest]
	if len(f.buf) == 0 && cap(f.buf) > 64<<10 {
		f.buf = nil // do not hold on to the buffer of a large message
	}
}

// frame parses the frame at the start of b, if complete, and returns its
// length (0 if more bytes are needed).
func (f *frameParser) frame(b []byte) (int, error) {
	if len(b) < 2 {
		return 0, nil
	}
	fin := b[0]&0x80 != 0
	op := int(b[0] & 0x0f)
	masked := b[1]&0x80 != 0
	size := uint64(b[1] & 0x7f)
	h := 2
	switch size {
	case 126:
		if len(b) < 4 {
			return 0, nil
		}
		size = uint64(binary.BigEndian.Uint16(b[2:]))
		h = 4
	case 127:
		if len(b) < 10 {
			return 0, nil
		}
		size = binary.BigEndian.Uint64(b[2:])
		h = 10
	}
	if size > maxMessage {
		return 0, errFrame
	}
	var key [4]byte
	if masked {
		if len(b) < h+4 {
			return 0, nil
		}
		copy(key[:], b[h:h+4])
		h += 4
	}
	if uint64(len(b)-h) < size {
		return 0, nil
	}
	n := h + int(size)
	payload := b[h:n]
	if masked {
		for i := range payload {
			payload[i] ^= key[i&3]
		}
	}
	switch op {
	case opClose, opPing, opPong:
		if !fin || size > 125 {
			return 0, errFrame
		}
		f.emit(f.fromClient, op, append([]byte(nil), payload...))
	case opText, opBinary:
		if f.inMsg {
			return 0, errFrame
		}
		if fin {
			f.emit(f.fromClient, op, append([]byte(nil), payload...))
			break
		}
		f.inMsg, f.msgOp = true, op
		f.msg = append([]byte(nil), payload...)
	case opContinuation:
		if !f.inMsg || len(f.msg)+len(payload) > maxMessage {
			return 0, errFrame
		}
		f.msg = append(f.msg, payload...)
		if fin {
			msg := f.msg
			f.inMsg, f.msg = false, nil
			f.emit(f.fromClient, f.msgOp, msg)
		}
	default:
		return 0, errFrame
	}
	return n, nil
}
