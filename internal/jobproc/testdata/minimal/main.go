// Command minimal is the smallest program that serves jobs: its idle
// resident set is what a job process costs at least.
package main

import (
	"context"
	"os"

	"github.com/lkagent/lkagent/internal/jobproc"
)

func main() {
	if !jobproc.IsChild() {
		os.Exit(2)
	}
	err := jobproc.Serve(context.Background(), func(ctx context.Context, s jobproc.Spec, r *jobproc.Reporter) jobproc.Outcome {
		<-ctx.Done()
		return jobproc.Success()
	})
	if err != nil {
		os.Exit(1)
	}
}
