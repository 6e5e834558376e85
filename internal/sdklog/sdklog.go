// Package sdklog gives LiveKit's Go SDK (server-sdk-go, and pion beneath it
// for a room's peer connection) a logger that writes to a *slog.Logger, at
// levels that suit an agent worker: the SDK's and pion's Info lines, which
// narrate every connection, become Debug; warnings and errors stay what
// they are. Without it the SDK writes to stderr whatever the worker's
// logger is.
package sdklog

import (
	"context"
	"log/slog"
	"strings"

	protologger "github.com/livekit/protocol/logger"
	"github.com/livekit/protocol/logger/zaputil"
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
	if err != nil {
		kv = append(kv, slog.Any("error", err))
	}
	if g.name != "" {
		kv = append(kv, slog.String("sdk", g.name))
	}
	g.l.Log(ctx, level, msg, kv...)
}

func (g *logger) Debugw(msg string, kv ...any) { g.log(LevelTrace, msg, nil, kv) }
func (g *logger) Infow(msg string, kv ...any)  { g.log(slog.LevelDebug, msg, nil, kv) }
func (g *logger) Warnw(msg string, err error, kv ...any) {
	g.log(slog.LevelWarn, msg, err, kv)
}
func (g *logger) Errorw(msg string, err error, kv ...any) {
	g.log(slog.LevelError, msg, err, kv)
}

func (g *logger) WithValues(kv ...any) protologger.Logger {
	return &logger{l: g.l.With(kv...), name: g.name, depth: g.depth}
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
