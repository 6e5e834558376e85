package worker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// URL schemes are case-insensitive: HTTP:// is http://, WSS:// is wss://.
// Before, an upper-case http URL passed validation, was dialled as it was
// and retried for ever.
func TestURLSchemeCaseInsensitive(t *testing.T) {
	t.Parallel()
	for _, scheme := range []string{"ws", "WS", "Ws", "http", "HTTP", "Http"} {
		t.Run(scheme, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			o := testOptions(srv, "url-bot", "")
			o.URL = scheme + "://" + strings.TrimPrefix(srv.URL(), "ws://")
			o.MaxRetry = 1
			w := newWorker(t, o, newGated().handle)
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			if err := w.Start(ctx); err != nil {
				t.Fatalf("Start with %s = %v", o.URL, err)
			}
			if err := w.Stop(ctx); err != nil {
				t.Fatalf("Stop = %v", err)
			}
		})
	}
}

// A permanent error ends Run at once, whatever the case of the scheme:
// a plain server dialled with WSS:// is misconfigured, not retried.
func TestPermanentErrorNotRetried(t *testing.T) {
	t.Parallel()
	for _, scheme := range []string{"wss", "WSS", "HTTPS"} {
		t.Run(scheme, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			o := testOptions(srv, "url-bot", "")
			o.URL = scheme + "://" + strings.TrimPrefix(srv.URL(), "ws://")
			w := newWorker(t, o, newGated().handle) // MaxRetry 0: retries for ever what may pass
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			begin := time.Now()
			err := w.Run(ctx)
			if !errors.Is(err, worker.ErrMisconfigured) {
				t.Fatalf("Run with %s = %v, want ErrMisconfigured", o.URL, err)
			}
			if n := srv.Attempts(); n > 1 {
				t.Errorf("%d attempts, want at most 1: a permanent error is not retried", n)
			}
			t.Logf("Run returned after %s", time.Since(begin).Round(time.Millisecond))
		})
	}
}
