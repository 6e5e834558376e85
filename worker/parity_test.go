package worker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// endReport is everything a job's end shows outside: the event, the
// status the server got, the metric and the log line.
type endReport struct {
	status   worker.EndStatus
	errText  string // the event's Err
	cause    string // the event's Cause
	wire     string // the final status the server got, "" for none
	metric   float64
	logMsg   string
	logKeys  []string
	dupeKeys []string // keys that appear more than once in a job's log line
}

// causeName names the sentinel a job's cancel cause is, "" for none.
func causeName(cause error) string {
	if cause == nil {
		return ""
	}
	for _, e := range []error{job.ErrTerminated, job.ErrDrainTimeout, job.ErrWorkerStopped, job.ErrRoomDisconnected,
		job.ErrShutdown, job.ErrParticipantLeft} {
		if errors.Is(cause, e) {
			return e.Error()
		}
	}
	return "other: " + cause.Error()
}

var keyRE = regexp.MustCompile(`(?:^|\s)([a-z_]+)=`)

// keysOf returns the sorted keys of a recorded line, and those repeated.
func keysOf(text string) (keys, dupes []string) {
	seen := map[string]bool{}
	for _, m := range keyRE.FindAllStringSubmatch(text, -1) {
		if seen[m[1]] && !slices.Contains(dupes, m[1]) {
			dupes = append(dupes, m[1])
		}
		seen[m[1]] = true
	}
	for k := range seen {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, dupes
}

// The same handler reports the same end in process and in a job process:
// the same status, error and cause in EventEnded, the same final status to
// the server, the same metric and the same log line with the same
// attributes (each once).
func TestExecutorParity(t *testing.T) {
	t.Parallel()
	type jobCase struct {
		name, meta string
		end        func(t *testing.T, r *running, c *workertest.Conn, j *livekit.Job)
	}
	terminate := func(t *testing.T, _ *running, c *workertest.Conn, j *livekit.Job) {
		if err := c.Terminate(j.GetId()); err != nil {
			t.Fatal(err)
		}
	}
	cases := []jobCase{
		{"returns", "ok", nil},
		{"returns an error", "fail", nil},
		{"panics", "panic", nil},
		{"shuts down from the handler", "shutdown", nil},
		{"terminated by the server", "hold:", terminate},
		{"shuts down, then the server terminates it while it ends", "shutdown-late:", nil},
		{"drain timeout", "hold:", func(t *testing.T, r *running, _ *workertest.Conn, _ *livekit.Job) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_ = r.w.Stop(ctx)
		}},
	}
	run := func(t *testing.T, procs bool, tc jobCase) endReport {
		srv := workertest.NewServer(t)
		o := processOptions(srv, worker.ProcessOptions{})
		if !procs {
			o.Executor = nil
		}
		// A job process that was told to stop may take seconds to end on
		// a loaded machine: its end must still come before the worker
		// gives up on it.
		o.ShutdownTimeout = patience / 2
		r := startWorker(t, o, misbehave)
		sub := r.w.Subscribe(worker.EventEnded)
		defer sub.Close()
		c := mustConn(t, srv)
		j := procJob(tc.meta)
		dir := ""
		if strings.HasSuffix(tc.meta, ":") {
			dir = t.TempDir()
			j.Metadata += dir
		}
		dispatch(t, c, j)
		if dir != "" {
			// The handler runs (holds, or ends itself and waits in its
			// shutdown hook).
			eventually(t, "the job's handler", func() bool {
				_, err := os.Stat(filepath.Join(dir, "waiting"))
				return err == nil
			})
		}
		if tc.meta == "shutdown-late:" {
			terminate(t, r, c, j)
			// The worker handles a termination before it reads the next
			// message: once an offer after it is answered, it was seen.
			if _, err := c.Offer(waitCtx(t), workertest.NewJob("someone-else", "")); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "release"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if tc.end != nil {
			tc.end(t, r, c, j)
		}
		e, _ := nextEvent(t, sub, "ended", ended(j.GetId()))
		rep := endReport{status: e.Status}
		if e.Err != nil {
			rep.errText = e.Err.Error()
		}
		rep.cause = causeName(e.Cause)
		if e.Cause != nil {
			rep.cause += " (" + e.Cause.Error() + ")"
		}
		if e.Status != worker.StatusTerminated {
			// A status after the server's termination reaches it as one of
			// an unknown job, as on LiveKit's server.
			var u *livekit.UpdateJobStatus
			eventually(t, "the job's final status", func() bool {
				for _, s := range append(c.JobStatuses(), c.UnknownStatuses()...) {
					if s.GetJobId() == j.GetId() && (s.GetStatus() == livekit.JobStatus_JS_SUCCESS || s.GetStatus() == livekit.JobStatus_JS_FAILED) {
						u = s
						return true
					}
				}
				return false
			})
			rep.wire = u.GetStatus().String() + " " + u.GetError()
		}
		rep.metric = metricValue(t, r.w, "jobs_finished_total", "status", string(e.Status))
		for _, l := range r.logs.entries() {
			if !strings.Contains(l.Text, "job_id="+j.GetId()) {
				continue
			}
			if _, d := keysOf(l.Text); len(d) > 0 {
				rep.dupeKeys = append(rep.dupeKeys, l.Msg+": "+strings.Join(d, ","))
			}
			switch l.Msg {
			case "job finished", "job failed", "job terminated by server":
				rep.logMsg = l.Msg
				rep.logKeys, _ = keysOf(l.Text)
			}
		}
		return rep
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in, proc := run(t, false, tc), run(t, true, tc)
			if in.status != proc.status || in.errText != proc.errText || in.cause != proc.cause || in.wire != proc.wire ||
				in.metric != proc.metric || in.logMsg != proc.logMsg || !slices.Equal(in.logKeys, proc.logKeys) {
				t.Errorf("in process and in a job process the job ended differently:\n  in process: %+v\n  process:    %+v", in, proc)
			}
			if len(in.dupeKeys)+len(proc.dupeKeys) > 0 {
				t.Errorf("log lines with a key twice: in process %v, in a job process %v", in.dupeKeys, proc.dupeKeys)
			}
			if in.logMsg == "" {
				t.Errorf("no end line for the job")
			}
		})
	}
}
