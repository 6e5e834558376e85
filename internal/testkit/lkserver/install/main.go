// Command install makes sure the LiveKit server binary the tests and the
// demo run is installed (building it once with go install if needed) and
// prints its path.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	bin, err := lkserver.Binary(ctx, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "install livekit-server:", err)
		os.Exit(1)
	}
	fmt.Printf("livekit-server %s: %s\n", lkserver.Version, bin)
}
