// Command withsdk serves jobs with the LiveKit server SDK linked in, as an
// agent's binary has it: its idle resident set is closer to a real agent's.
package main

import (
	"context"
	"os"

	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/jobproc"
)

func main() {
	if !jobproc.IsChild() {
		os.Exit(2)
	}
	err := jobproc.Serve(context.Background(), func(ctx context.Context, s jobproc.Spec, r *jobproc.Reporter) jobproc.Outcome {
		room := lksdk.NewRoom(nil) // what a job would join
		_ = room
		<-ctx.Done()
		return jobproc.Success()
	})
	if err != nil {
		os.Exit(1)
	}
}
