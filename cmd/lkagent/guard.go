package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lkagent/lkagent/guard"
)

func runGuard(ctx context.Context, e *env, args []string) error {
	const name = "guard"
	f := newFlags(name, "--listen ADDR [--max-restarts N] [--window D] [--backoff D] [flags]",
		"Restarts agents that failed in rooms that still need them. It receives the LiveKit server's\n"+
			"webhooks on POST /webhook (signed with the API key and secret; anything else gets 401) and,\n"+
			"when an agent leaves its room with a failure (CONNECTION_TIMEOUT, SIGNAL_CLOSE, JOIN_FAILURE,\n"+
			"STATE_MISMATCH, MEDIA_FAILURE, AGENT_ERROR), dispatches the same agent name, deployment and\n"+
			"metadata to the room again, unless the dispatch says JRP_NEVER, the room is gone or has only\n"+
			"agents left, or the agent was restarted --max-restarts times within --window.\n"+
			"Configure the server with: webhook: {api_key: KEY, urls: [http://ADDR/webhook]}.\n"+
			"It also serves held dispatches of every agent (dispatches the server dropped because no worker\n"+
			"of their agent name and deployment took their job): every --held-interval it re-creates those\n"+
			"with no job --held-after their creation, and exports lkagent_dispatches_unserved{agent_name,\n"+
			"deployment}, the signal to scale a deployment from zero on (--held=false turns it off).\n"+
			"Also serves GET /healthz and GET /metrics. Its log goes to stdout. SIGINT or SIGTERM stops\n"+
			"it: no new webhooks, restarts under way may finish within --drain-timeout.")
	c := addConn(f)
	listen := f.fs.String("listen", "127.0.0.1:8089", "address to serve on; :8089 for every interface (the server must reach it)")
	maxRestarts := f.fs.Int("max-restarts", guard.DefaultMaxRestarts, "restarts of one room, agent and deployment allowed per --window")
	window := f.fs.Duration("window", guard.DefaultWindow, "period --max-restarts counts over")
	backoff := f.fs.Duration("backoff", guard.DefaultBackoff, "least time between the first and second restart of one agent in a room; doubles after each")
	maxBackoff := f.fs.Duration("max-backoff", guard.DefaultMaxBackoff, "longest wait between restarts")
	drain := f.fs.Duration("drain-timeout", 30*time.Second, "how long a stopping guard lets restarts under way finish")
	heldOn := f.fs.Bool("held", true, "serve held dispatches and export lkagent_dispatches_unserved")
	heldAfter := f.fs.Duration("held-after", guard.DefaultHeldAfter, "a dispatch with no job this long after its creation is held")
	heldInterval := f.fs.Duration("held-interval", guard.DefaultHeldInterval, "how often to look for held dispatches")
	heldAgents := f.fs.String("held-agents", "", "comma-separated agent names to serve held dispatches of (default every named agent)")
	debug := f.fs.Bool("debug", false, "log at debug level")
	f.env("listen", "LKAGENT_GUARD_LISTEN")
	if err := f.parse(e, args); err != nil {
		return err
	}
	if err := c.check(name); err != nil {
		return err
	}
	switch {
	case *maxRestarts < 1:
		return usagef(name, "--max-restarts must be at least 1")
	case *window <= 0 || *backoff <= 0 || *maxBackoff <= 0 || *drain <= 0:
		return usagef(name, "--window, --backoff, --max-backoff and --drain-timeout must be positive")
	case *backoff > *maxBackoff:
		return usagef(name, "--backoff (%s) must not exceed --max-backoff (%s)", *backoff, *maxBackoff)
	case *heldAfter <= 0 || *heldInterval <= 0:
		return usagef(name, "--held-after and --held-interval must be positive")
	}

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(&syncWriter{w: e.stdout}, &slog.HandlerOptions{Level: level}))
	for _, n := range f.envNotes() {
		log.Info("from the environment: " + n)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r, err := guard.New(guard.Options{
		URL: c.url, APIKey: c.apiKey, APISecret: c.apiSecret,
		MaxRestarts: *maxRestarts, Window: *window, Backoff: *backoff, MaxBackoff: *maxBackoff,
		APITimeout: c.timeout,
		Logger:     log,
		Registerer: reg,
	})
	if err != nil {
		var oe *guard.OptionError
		if errors.As(err, &oe) {
			return usagef(name, "%v", err)
		}
		return err
	}

	// A wrong key or secret would make every restart fail: say so now. A
	// server not up yet is only worth a warning; the guard waits for its
	// webhooks anyway.
	checkCtx, cancel := context.WithTimeout(ctx, c.timeout)
	err = r.Check(checkCtx)
	cancel()
	switch {
	case errors.Is(err, guard.ErrUnauthorized):
		return fmt.Errorf("the LiveKit server at %s rejected the API key or secret: check --api-key and --api-secret or $%s and $%s",
			c.url, guard.EnvAPIKey, guard.EnvAPISecret)
	case ctx.Err() != nil:
		return interrupted(ctx)
	case err != nil:
		log.Warn("the LiveKit server does not answer yet; restarts will fail until it does", slog.String("url", c.url),
			slog.String("error", oneLine(c.apiError(context.Background(), "check", err).Error())))
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("cannot listen on --listen %q: %v", *listen, err)
	}
	heldDone := make(chan struct{})
	heldCtx, stopHeld := context.WithCancel(ctx)
	defer stopHeld()
	if *heldOn {
		var agents []string
		for a := range strings.SplitSeq(*heldAgents, ",") {
			if a = strings.TrimSpace(a); a != "" {
				agents = append(agents, a)
			}
		}
		h, err := guard.NewHeld(guard.HeldOptions{
			URL: c.url, APIKey: c.apiKey, APISecret: c.apiSecret, APITimeout: c.timeout,
			AgentNames: agents, After: *heldAfter, Interval: *heldInterval,
			Logger: log, Registerer: reg,
		})
		if err != nil {
			_ = ln.Close()
			return err
		}
		go func() { defer close(heldDone); _ = h.Run(heldCtx) }()
	} else {
		close(heldDone)
	}
	wh := guard.NewWebhook(r, guard.WebhookOptions{})
	mux := http.NewServeMux()
	mux.Handle(guard.WebhookPath, wh)
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { _, _ = rw.Write([]byte("OK")) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	addr := ln.Addr().String()
	log.Info("guard listening", slog.String("addr", addr), slog.String("webhook_url", "http://"+addr+guard.WebhookPath),
		slog.String("livekit_url", c.url), slog.Int("max_restarts", *maxRestarts), slog.Duration("window", *window))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	log.Info("guard stopping: no new webhooks; waiting for restarts under way", slog.Duration("drain_timeout", *drain))
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = hs.Shutdown(shutCtx)
	cancel()
	drainCtx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	if err := wh.Close(drainCtx); err != nil {
		log.Warn("restarts still under way after --drain-timeout were cancelled", slog.Duration("drain_timeout", *drain))
	}
	stopHeld()
	<-heldDone // a replacement under way is finished first
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s failed: %v", addr, serveErr)
	}
	log.Info("guard stopped")
	return nil
}
