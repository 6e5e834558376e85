package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/racebuild"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// envNewWhileSDKInUse makes this test binary run newWhileSDKInUse instead
// of its tests.
const envNewWhileSDKInUse = "LKAGENT_TEST_NEW_WHILE_SDK_IN_USE"

// newWhileSDKInUse builds workers while another goroutine uses the SDK, as
// a program does that joins rooms of its own, then exits 0. The SDK's
// process-wide logger is a plain variable: a worker that set it then
// would race with every read of it.
func newWhileSDKInUse() {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			lksdk.NewRoom(lksdk.NewRoomCallback()) // reads the SDK's logger
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(20 * time.Millisecond)
	for i := range 3 {
		_, err := worker.New(worker.Options{URL: "ws://127.0.0.1:1", APIKey: "k", APISecret: "s",
			AgentName: fmt.Sprintf("bot-%d", i), Logger: slog.New(slog.DiscardHandler)},
			func(context.Context, *job.Job) error { return nil })
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	close(stop)
	<-done
	os.Exit(0)
}

// A program may use the SDK (join rooms, call its API) from other
// goroutines while it builds its workers: New points pion's lines at the
// worker's logger without writing the SDK's process-wide setting, which
// would be a data race. The proof runs under the race detector only.
func TestNewWhileSDKInUse(t *testing.T) {
	t.Parallel()
	if !racebuild.Enabled {
		t.Skip("needs the race detector: go test -race")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envNewWhileSDKInUse+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "DATA RACE") {
		t.Fatalf("building workers while the SDK is in use: %v\n%s", err, out)
	}
}
