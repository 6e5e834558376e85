package worker

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
)

func TestHeldOptions(t *testing.T) {
	t.Parallel()
	base := func() Options {
		return Options{URL: "ws://127.0.0.1:7880", APIKey: "k", APISecret: optSecret, AgentName: "bot"}
	}
	for _, tc := range []struct {
		name    string
		change  func(*Options)
		wantErr string // option named in the error; "" = valid
		enabled bool
	}{
		{"on by default", func(*Options) {}, "", true},
		{"disabled", func(o *Options) { o.Held.Disabled = true }, "", false},
		{"participant jobs are not served", func(o *Options) { o.JobType = livekit.JobType_JT_PARTICIPANT }, "", false},
		{"negative After", func(o *Options) { o.Held.After = -time.Second }, "Held.After", false},
		{"negative Interval", func(o *Options) { o.Held.Interval = -time.Second }, "Held.Interval", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base()
			tc.change(&o)
			w, err := newWorker(o, noop, func(string) string { return "" })
			if tc.wantErr != "" {
				var oe *OptionError
				if !errors.As(err, &oe) || oe.Option != tc.wantErr {
					t.Fatalf("newWorker = %v, want an OptionError for %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := w.heldSweep != nil; got != tc.enabled {
				t.Fatalf("held dispatches enabled = %v, want %v", got, tc.enabled)
			}
			if tc.enabled && (w.o.Held.After != DefaultHeldAfter || w.o.Held.Interval != DefaultHeldInterval) {
				t.Fatalf("defaults not applied: %+v", w.o.Held)
			}
		})
	}
}

// A dispatch created before the worker was last unable to take it is held
// After its creation; one created while it could is given longer.
func TestHeldAfterForAvailability(t *testing.T) {
	t.Parallel()
	w, err := newWorker(Options{URL: "ws://127.0.0.1:7880", APIKey: "k", APISecret: optSecret, AgentName: "bot"}, noop,
		func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	h := w.heldSweep
	registered := time.Now()
	h.unavailable.Store(registered.UnixNano())
	if got := w.heldSweep.heldAfterFor(w.o.Held.After, registered.Add(-time.Second)); got != DefaultHeldAfter {
		t.Fatalf("a dispatch from before the registration: held after %s, want %s", got, DefaultHeldAfter)
	}
	if got := w.heldSweep.heldAfterFor(w.o.Held.After, registered.Add(time.Second)); got != heldBusyFactor*DefaultHeldAfter {
		t.Fatalf("a dispatch made while the worker was available: held after %s, want %s", got, heldBusyFactor*DefaultHeldAfter)
	}
	// A registration: the server may still drop a dispatch made in the
	// moment it needs to route to the new worker.
	w.kickHeld(true)
	regAt := time.Now()
	if got := w.heldSweep.heldAfterFor(w.o.Held.After, regAt.Add(heldRoutingSettle/2)); got != DefaultHeldAfter {
		t.Fatalf("a dispatch made just after a registration: held after %s, want %s", got, DefaultHeldAfter)
	}
	if got := w.heldSweep.heldAfterFor(w.o.Held.After, regAt.Add(heldRoutingSettle+time.Second)); got != heldBusyFactor*DefaultHeldAfter {
		t.Fatalf("a dispatch made once the worker was routed to: held after %s, want %s", got, heldBusyFactor*DefaultHeldAfter)
	}
	// A later, earlier mark never moves it back.
	w.heldSweep.unavailableUntil(regAt)
	if got := w.heldSweep.heldAfterFor(w.o.Held.After, regAt.Add(heldRoutingSettle/2)); got != DefaultHeldAfter {
		t.Fatalf("after an earlier mark: held after %s, want %s", got, DefaultHeldAfter)
	}
}

// /worker shows how many held dispatches the worker served.
func TestHeldInWorkerEndpoint(t *testing.T) {
	t.Parallel()
	w, err := newWorker(Options{URL: "ws://127.0.0.1:7880", APIKey: "k", APISecret: optSecret, AgentName: "bot"}, noop,
		func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	w.heldSweep.total.Add(2)
	rec := httptest.NewRecorder()
	w.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/worker", nil))
	var info map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &info); err != nil {
		t.Fatalf("/worker: %v\n%s", err, rec.Body)
	}
	if got := info["dispatches_recovered"]; got != float64(2) {
		t.Fatalf("/worker dispatches_recovered = %v, want 2\n%s", got, rec.Body)
	}
}
