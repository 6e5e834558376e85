package jobtest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/guard"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/job/jobtest"
)

// A test job's errors name the jobtest.Options fields to set.
func TestErrorsNameTheOptions(t *testing.T) {
	t.Parallel()
	j := jobtest.New(jobtest.Options{}).Job()
	_, err := j.Connect(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "jobtest.Options.URL and jobtest.Options.Token") {
		t.Errorf("Connect: %v, want it to name jobtest.Options.URL and Token", err)
	}
	if _, err := j.API(); err == nil || !strings.Contains(err.Error(), "jobtest.Options") {
		t.Errorf("API: %v, want it to name jobtest.Options", err)
	}
}

// Restarts reads the restart count a restarted agent's dispatch carries.
func TestRestarts(t *testing.T) {
	t.Parallel()
	if job.AttrRestarts != guard.AttrRestarts {
		t.Fatalf("job.AttrRestarts %q, guard.AttrRestarts %q", job.AttrRestarts, guard.AttrRestarts)
	}
	for _, tc := range []struct {
		attrs map[string]string
		want  int
	}{
		{nil, 0},
		{map[string]string{job.AttrRestarts: "2"}, 2},
		{map[string]string{job.AttrRestarts: "-1"}, 0},
		{map[string]string{job.AttrRestarts: "many"}, 0},
	} {
		j := jobtest.New(jobtest.Options{Info: &livekit.Job{Id: "AJ_1", Attributes: tc.attrs}}).Job()
		if got := j.Restarts(); got != tc.want {
			t.Errorf("Restarts with %v = %d, want %d", tc.attrs, got, tc.want)
		}
	}
}
