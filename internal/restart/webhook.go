package restart

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/webhook"
)

// WebhookPath is the path the [Webhook] handler serves.
const WebhookPath = "/webhook"

// agentNameAttribute is the attribute the server gives every agent
// participant: its agent name.
const agentNameAttribute = "lk.agent_name"

// Defaults of [WebhookOptions].
const (
	DefaultMaxInFlight       = 64
	DefaultRestartTimeout    = 2 * time.Minute
	DefaultMaxBodyBytes      = 1 << 20
	DefaultRejectLogInterval = time.Minute
	// dedupeWindow is how long an event id is remembered: longer than the
	// server keeps retrying an event (its signature is valid for 5 min).
	dedupeWindow = 10 * time.Minute
	// dedupeMax bounds the ids remembered.
	dedupeMax = 100_000
)

// WebhookOptions configure a [Webhook].
type WebhookOptions struct {
	// KeyProvider verifies the signatures; default: the Restarter's API key
	// and secret (the server signs its webhooks with the key named in its
	// webhook configuration).
	KeyProvider auth.KeyProvider
	// MaxInFlight bounds the restarts running at once; a departing agent
	// past it is answered 503 with Retry-After, and the server sends the
	// event again. Default 64.
	MaxInFlight int
	// RestartTimeout bounds one restart, backoff included. Default 2m.
	RestartTimeout time.Duration
	// MaxBodyBytes bounds a request's body. Default 1 MiB.
	MaxBodyBytes int64
	// RejectLogInterval: requests refused for their signature (401) are
	// all counted (lkagent_guard_webhooks_total{result="unauthorized"}),
	// but logged at most once per interval, each line with the number of
	// refusals not logged since the previous one, so that a flood of
	// forged posts cannot flood the log. Default 1m.
	RejectLogInterval time.Duration
}

// Webhook is the http.Handler that receives the server's webhooks on
// POST /webhook and hands every agent that left its room with a failure to
// its Restarter. It answers at once (200 accepted or ignored, 401 for a
// missing or bad signature, 503 when full or closing) and restarts in the
// background, at most MaxInFlight at a time; [Webhook.Close] waits for them.
//
// Mount it on a mux of your own with
//
//	mux.Handle(guard.WebhookPath, wh)
type Webhook struct {
	r    *Restarter
	o    WebhookOptions
	kp   auth.KeyProvider
	mux  *http.ServeMux
	slot chan struct{}

	ctx    context.Context // restarts run under it; cancelled by Close
	cancel context.CancelCauseFunc

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
	seen   map[string]time.Time // event ids accepted, with when
	order  []string             // seen's keys, oldest first

	rejects rejectLog
}

// rejectLog limits the log lines of refused requests to one per interval.
type rejectLog struct {
	mu         sync.Mutex
	now        func() time.Time // time.Now; tests replace it
	last       time.Time        // when a refusal was last logged
	suppressed int              // refusals not logged since
}

// note records a refusal and reports whether to log it, with the number
// of refusals not logged before it.
func (l *rejectLog) note(interval time.Duration) (log bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.last.IsZero() && now.Sub(l.last) < interval {
		l.suppressed++
		return false, 0
	}
	l.last, suppressed, l.suppressed = now, l.suppressed, 0
	return true, suppressed
}

// errClosed is the cause of the restarts cancelled by Close.
var errClosed = errors.New("guard: webhook receiver closed")

// NewWebhook returns the webhook receiver of r.
func NewWebhook(r *Restarter, o WebhookOptions) *Webhook {
	if o.KeyProvider == nil {
		o.KeyProvider = auth.NewSimpleKeyProvider(r.o.APIKey, r.o.APISecret)
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.RestartTimeout <= 0 {
		o.RestartTimeout = DefaultRestartTimeout
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.RejectLogInterval <= 0 {
		o.RejectLogInterval = DefaultRejectLogInterval
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	w := &Webhook{r: r, o: o, kp: o.KeyProvider, slot: make(chan struct{}, o.MaxInFlight),
		ctx: ctx, cancel: cancel, seen: map[string]time.Time{}, rejects: rejectLog{now: time.Now}}
	w.mux = http.NewServeMux()
	w.mux.HandleFunc("POST "+WebhookPath, w.receive)
	return w
}

// ServeHTTP serves POST /webhook; other methods on that path get 405,
// other paths 404.
func (w *Webhook) ServeHTTP(rw http.ResponseWriter, req *http.Request) { w.mux.ServeHTTP(rw, req) }

// Close stops taking webhooks (503 from then on), waits for the restarts
// under way until ctx ends, then cancels those left and waits for them to
// return. It returns ctx's error if it had to cancel any.
func (w *Webhook) Close(ctx context.Context) error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
		w.cancel(errClosed)
		return nil
	case <-ctx.Done():
		w.cancel(errClosed)
		<-done
		return ctx.Err()
	}
}

func (w *Webhook) receive(rw http.ResponseWriter, req *http.Request) {
	req.Body = http.MaxBytesReader(rw, req.Body, w.o.MaxBodyBytes)
	ev, err := webhook.ReceiveWebhookEvent(req, w.kp)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			w.r.m.webhooks.WithLabelValues(webhookTooLarge).Inc()
			http.Error(rw, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		w.r.m.webhooks.WithLabelValues(webhookUnauthorized).Inc()
		if log, suppressed := w.rejects.note(w.o.RejectLogInterval); log {
			w.r.log.Warn("webhook refused: not signed by the server's key", slog.String("remote", req.RemoteAddr),
				slog.String("error", err.Error()), slog.Int("refusals_not_logged", suppressed),
				slog.Duration("log_interval", w.o.RejectLogInterval))
		}
		http.Error(rw, "webhook signature missing or invalid", http.StatusUnauthorized)
		return
	}

	f, ok := failureOf(ev)
	if !ok {
		w.r.m.webhooks.WithLabelValues(webhookIgnored).Inc()
		rw.WriteHeader(http.StatusOK)
		return
	}

	w.mu.Lock()
	switch {
	case w.closed:
		w.mu.Unlock()
		w.r.m.webhooks.WithLabelValues(webhookBusy).Inc()
		rw.Header().Set("Retry-After", "1")
		http.Error(rw, "closing", http.StatusServiceUnavailable)
		return
	case ev.Id != "" && w.isSeen(ev.Id):
		w.mu.Unlock()
		w.r.m.webhooks.WithLabelValues(webhookDuplicate).Inc()
		w.r.log.Info("webhook received again: ignored", slog.String("event_id", ev.Id), slog.String("room", f.Room),
			slog.String("identity", f.Identity))
		rw.WriteHeader(http.StatusOK)
		return
	}
	select {
	case w.slot <- struct{}{}:
	default:
		w.mu.Unlock()
		w.r.m.webhooks.WithLabelValues(webhookBusy).Inc()
		w.r.log.Warn("webhook refused: too many restarts under way; the server will send it again",
			slog.Int("max_in_flight", w.o.MaxInFlight), slog.String("room", f.Room), slog.String("identity", f.Identity))
		rw.Header().Set("Retry-After", "2")
		http.Error(rw, "too many restarts under way", http.StatusServiceUnavailable)
		return
	}
	if ev.Id != "" {
		w.remember(ev.Id)
	}
	w.wg.Add(1)
	w.mu.Unlock()

	w.r.m.webhooks.WithLabelValues(webhookAccepted).Inc()
	rw.WriteHeader(http.StatusOK)
	go func() {
		defer func() { <-w.slot; w.wg.Done() }()
		ctx, cancel := context.WithTimeoutCause(w.ctx, w.o.RestartTimeout,
			fmt.Errorf("guard: restart took longer than %s", w.o.RestartTimeout))
		defer cancel()
		_, _ = w.r.restart(ctx, f, "webhook:"+ev.Event) // logged and counted there
	}()
}

// failureOf turns an agent's departure into a Failure; false for any other
// event.
func failureOf(ev *livekit.WebhookEvent) (Failure, bool) {
	switch ev.Event {
	case webhook.EventParticipantLeft, webhook.EventParticipantConnectionAborted:
	default:
		return Failure{}, false
	}
	p := ev.Participant
	if p == nil || p.Kind != livekit.ParticipantInfo_AGENT || ev.Room.GetName() == "" || p.Identity == "" {
		return Failure{}, false
	}
	f := Failure{
		Room:      ev.Room.GetName(),
		AgentName: p.Attributes[agentNameAttribute],
		Identity:  p.Identity,
		Reason:    p.DisconnectReason.String(),

		deploymentUnknown: true,
	}
	switch {
	case p.JoinedAtMs > 0:
		f.JoinedAt = time.UnixMilli(p.JoinedAtMs)
	case p.JoinedAt > 0:
		f.JoinedAt = time.Unix(p.JoinedAt, 0).Add(time.Second) // whole seconds: the next one bounds it
	}
	return f, true
}

// isSeen reports whether the event id was accepted before; w.mu is held.
func (w *Webhook) isSeen(id string) bool {
	_, ok := w.seen[id]
	return ok
}

// remember records an accepted event id, forgetting those older than the
// dedupe window, or the oldest past dedupeMax; w.mu is held.
func (w *Webhook) remember(id string) {
	now := time.Now()
	for len(w.order) > 0 && (len(w.order) >= dedupeMax || now.Sub(w.seen[w.order[0]]) > dedupeWindow) {
		delete(w.seen, w.order[0])
		w.order = w.order[1:]
	}
	w.seen[id] = now
	w.order = append(w.order, id)
}
