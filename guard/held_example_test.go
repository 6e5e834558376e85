package guard_test

import (
	"context"
	"log"
	"net/http"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lkagent/lkagent/guard"
)

// Serving held dispatches of support-bot (any SDK) and exporting
// lkagent_dispatches_unserved for an autoscaler to scale staging from zero.
func ExampleNewHeld() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	reg := prometheus.NewRegistry()
	h, err := guard.NewHeld(guard.HeldOptions{ // LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET
		AgentNames: []string{"support-bot"},
		Registerer: reg,
	})
	if err != nil {
		log.Fatal(err)
	}
	go func() { log.Fatal(http.ListenAndServe(":8089", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))) }()
	_ = h.Run(ctx) // every 10 s until SIGTERM
}
