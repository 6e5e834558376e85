// Package sdklog gives LiveKit's Go SDK (server-sdk-go, and pion beneath it
// for a room's peer connection) a logger that writes to a *slog.Logger, at
// levels that suit an agent worker: the SDK's and pion's Info lines, which
// narrate every connection, become Debug, and so do the warnings pion logs
// on healthy connections (see routine); other warnings and errors stay
// what they are. Without it the SDK writes to stderr whatever the worker's
// logger is.
package sdklog

import (
	"context"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/go-logr/stdr"
	protologger "github.com/livekit/protocol/logger"
	"github.com/livekit/protocol/logger/zaputil"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

// LevelTrace is the level of the SDK's own debug lines: below slog's Debug.
const LevelTrace = slog.LevelDebug - 4

// New returns a logger for the SDK that writes to l.
func New(l *slog.Logger) protologger.Logger { return &logger{l: l} }

type logger struct {
	l     *slog.Logger
	name  string
	depth int
}

func (g *logger) log(level slog.Level, msg string, err error, kv []any) {
	ctx := context.Background()
	if !g.l.Enabled(ctx, level) {
		return
	}
	kv = redactAll(kv)
	if err != nil {
		kv = append(kv, slog.Any("error", redact(err)))
	}
	if g.name != "" {
		kv = append(kv, slog.String("sdk", g.name))
	}
	g.l.Log(ctx, level, msg, kv...)
}

func (g *logger) Debugw(msg string, kv ...any) { g.log(LevelTrace, msg, nil, kv) }
func (g *logger) Infow(msg string, kv ...any)  { g.log(slog.LevelDebug, msg, nil, kv) }
func (g *logger) Warnw(msg string, err error, kv ...any) {
	level := slog.LevelWarn
	if routine(g.name, msg) {
		level = slog.LevelDebug
	}
	g.log(level, msg, err, kv)
}

// routine says whether a warning of the SDK's logger name is one pion logs
// on healthy connections, so that a warning means something:
//   - pion.ice "Failed to ping without candidate pairs": the ICE checks
//     start before the remote candidates arrive (the SDK trickles them);
//   - pion.sctp "… dtls fatal: conn is closed": a data channel write races
//     the close when the agent leaves its room;
//   - pion.mux "Warning: mux: no endpoint for packet …, adding to queue":
//     a DTLS packet arrives while its endpoint is being set up or closed,
//     and is queued.
//
// A connection that does fail is reported by the SDK as an error of its
// own (Connect fails, or the room disconnects).
func routine(name, msg string) bool {
	switch name {
	case "pion.ice":
		return strings.HasPrefix(msg, "Failed to ping without candidate pairs")
	case "pion.sctp":
		return strings.HasSuffix(msg, "dtls fatal: conn is closed")
	case "pion.mux":
		return strings.HasPrefix(msg, "Warning: mux: no endpoint for packet")
	}
	return false
}
func (g *logger) Errorw(msg string, err error, kv ...any) {
	g.log(slog.LevelError, msg, err, kv)
}

func (g *logger) WithValues(kv ...any) protologger.Logger {
	return &logger{l: g.l.With(redactAll(kv)...), name: g.name, depth: g.depth}
}

func (g *logger) WithUnlikelyValues(kv ...any) protologger.UnlikelyLogger {
	return protologger.NewUnlikelyLogger(g, kv...)
}

func (g *logger) WithName(name string) protologger.Logger {
	if g.name != "" {
		name = g.name + "." + name
	}
	return &logger{l: g.l, name: strings.TrimPrefix(name, "."), depth: g.depth}
}

func (g *logger) WithComponent(component string) protologger.Logger { return g.WithName(component) }
func (g *logger) WithCallDepth(depth int) protologger.Logger {
	return &logger{l: g.l, name: g.name, depth: g.depth + depth}
}
func (g *logger) WithItemSampler() protologger.Logger { return g }
func (g *logger) WithoutSampler() protologger.Logger  { return g }
func (g *logger) WithDeferredValues() (protologger.Logger, protologger.DeferredFieldResolver) {
	return g, zaputil.NoOpDeferrer{}
}

// The SDK's process-wide logger. server-sdk-go logs a room's own lines
// through the room's logger (see New), but pion, beneath it, logs through
// the SDK's process-wide logger only (lksdk.SetLogger), which writes to
// stderr by default. That setting is the process's, not a worker's, and
// lksdk.SetLogger is not safe while anything uses the SDK: so it is
// written once, when the program starts (init, before any goroutine of
// the program runs), with a forwarder to the logger installed last, or to
// where the SDK logged by default while none is. A program that calls
// lksdk.SetLogger itself replaces the forwarder, and keeps its logger.
var forward forwarder

func init() { lksdk.SetLogger(&forward) }

// sdkDefault is where the SDK logs by default: the standard library's
// default logger, through logr.
var sdkDefault = protologger.LogRLogger(stdr.New(log.Default()))

// forwarder is a process-wide logger that writes to whatever logger was
// installed last.
type forwarder struct{ to atomic.Pointer[slog.Logger] }

func (f *forwarder) current() protologger.Logger {
	l := f.to.Load()
	if l == nil {
		return sdkDefault
	}
	return New(l)
}

func (f *forwarder) Debugw(msg string, kv ...any)           { f.current().Debugw(msg, kv...) }
func (f *forwarder) Infow(msg string, kv ...any)            { f.current().Infow(msg, kv...) }
func (f *forwarder) Warnw(msg string, err error, kv ...any) { f.current().Warnw(msg, err, kv...) }
func (f *forwarder) Errorw(msg string, err error, kv ...any) {
	f.current().Errorw(msg, err, kv...)
}
func (f *forwarder) WithValues(kv ...any) protologger.Logger { return f.current().WithValues(kv...) }
func (f *forwarder) WithUnlikelyValues(kv ...any) protologger.UnlikelyLogger {
	return protologger.NewUnlikelyLogger(f, kv...)
}
func (f *forwarder) WithName(name string) protologger.Logger { return f.current().WithName(name) }
func (f *forwarder) WithComponent(c string) protologger.Logger {
	return f.current().WithComponent(c)
}
func (f *forwarder) WithCallDepth(int) protologger.Logger { return f }
func (f *forwarder) WithItemSampler() protologger.Logger  { return f }
func (f *forwarder) WithoutSampler() protologger.Logger   { return f }
func (f *forwarder) WithDeferredValues() (protologger.Logger, protologger.DeferredFieldResolver) {
	return f, zaputil.NoOpDeferrer{}
}

// Install makes the SDK's process-wide logger write to l (pion's lines,
// at the levels New maps), unless the program replaced it with
// lksdk.SetLogger. It is safe at any time.
func Install(l *slog.Logger) { forward.to.Store(l) }
