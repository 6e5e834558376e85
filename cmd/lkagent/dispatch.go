package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"

	"github.com/lkagent/lkagent/dispatch"
	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/worker"
)

// dispatchJSON is how --json shows a dispatch: every field always present,
// "deployment" empty for production.
type dispatchJSON struct {
	ID         string    `json:"id"`
	Room       string    `json:"room"`
	AgentName  string    `json:"agent_name"`
	Deployment string    `json:"deployment"`
	Metadata   string    `json:"metadata"`
	CreatedAt  time.Time `json:"created_at,omitzero"`
	Jobs       []jobJSON `json:"jobs"`
}

// jobJSON is one job of a dispatch: the state the server last recorded
// (at RecordedAt), not a live view. A job whose worker died stays
// "RUNNING" until its room closes.
type jobJSON struct {
	ID                  string    `json:"id"`
	Status              string    `json:"status"`
	RecordedAt          time.Time `json:"recorded_at,omitzero"`
	Deployment          string    `json:"deployment"`
	WorkerID            string    `json:"worker_id"`
	ParticipantIdentity string    `json:"participant_identity"`
	Error               string    `json:"error,omitempty"`
}

func toDispatchJSON(d *livekit.AgentDispatch) dispatchJSON {
	out := dispatchJSON{
		ID:         d.GetId(),
		Room:       d.GetRoom(),
		AgentName:  d.GetAgentName(),
		Deployment: d.GetDeployment(),
		Metadata:   d.GetMetadata(),
		Jobs:       []jobJSON{},
	}
	if ns := d.GetState().GetCreatedAt(); ns > 0 {
		out.CreatedAt = time.Unix(0, ns).UTC()
	}
	for _, j := range d.GetState().GetJobs() {
		jj := jobJSON{
			ID:                  j.GetId(),
			Status:              strings.TrimPrefix(j.GetState().GetStatus().String(), "JS_"),
			Deployment:          j.GetDeployment(),
			WorkerID:            j.GetState().GetWorkerId(),
			ParticipantIdentity: j.GetState().GetParticipantIdentity(),
			Error:               j.GetState().GetError(),
		}
		if ns := j.GetState().GetUpdatedAt(); ns > 0 {
			jj.RecordedAt = time.Unix(0, ns).UTC()
		}
		out.Jobs = append(out.Jobs, jj)
	}
	return out
}

// printDispatches writes dispatches as a table, or as JSON (an array, or one
// object when single is set).
func printDispatches(w io.Writer, asJSON, single bool, ds ...*livekit.AgentDispatch) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		ds = slices.Clone(ds)
		slices.SortStableFunc(ds, func(a, b *livekit.AgentDispatch) int {
			return cmp.Compare(a.GetState().GetCreatedAt(), b.GetState().GetCreatedAt())
		})
		if single && len(ds) == 1 {
			return enc.Encode(toDispatchJSON(ds[0]))
		}
		out := make([]dispatchJSON, 0, len(ds))
		for _, d := range ds {
			out = append(out, toDispatchJSON(d))
		}
		return enc.Encode(out)
	}
	ds = slices.Clone(ds)
	slices.SortStableFunc(ds, func(a, b *livekit.AgentDispatch) int {
		return cmp.Compare(a.GetState().GetCreatedAt(), b.GetState().GetCreatedAt())
	})
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "DISPATCH ID\tROOM\tAGENT NAME\tDEPLOYMENT\tMETADATA\tJOBS (LAST RECORDED STATE)")
	recordedRunning := false
	for _, d := range ds {
		j := toDispatchJSON(d)
		jobs := make([]string, 0, len(j.Jobs))
		for _, jb := range j.Jobs {
			s := jb.ID + " " + strings.ToLower(jb.Status)
			if !jb.RecordedAt.IsZero() {
				s += " " + time.Since(jb.RecordedAt).Round(time.Second).String() + " ago"
			}
			if jb.WorkerID != "" {
				s += " on " + jb.WorkerID
			}
			recordedRunning = recordedRunning || jb.Status == "RUNNING"
			jobs = append(jobs, s)
		}
		// Every cell is escaped: a name with a newline or a tab would
		// otherwise break the table (or drive the terminal).
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", deploy.Escape(j.ID), deploy.Escape(j.Room), agentLabel(j.AgentName),
			deploymentLabel(j.Deployment), orDash(deploy.Escape(j.Metadata)), orDash(deploy.Escape(strings.Join(jobs, ", "))))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if recordedRunning {
		_, err := fmt.Fprintln(w, "(job states are what the server last recorded, not live: a job whose worker died stays running until its room closes)")
		return err
	}
	return nil
}

// agentLabel shows an agent name in tables: "" is the automatic agent,
// dispatched to every new room.
func agentLabel(name string) string {
	if name == "" {
		return "(automatic)"
	}
	return deploy.Escape(name)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dispatchClient(c *conn) *lksdk.AgentDispatchClient {
	return lksdk.NewAgentDispatchServiceClient(c.httpURL(), c.apiKey, c.apiSecret)
}

func runDispatchCreate(ctx context.Context, e *env, args []string) error {
	const name = "dispatch create"
	f := newFlags(name, "--room ROOM --agent-name NAME [--deployment D] [--metadata M] [flags]",
		"Creates an agent dispatch: the server offers a job in ROOM to the workers registered with agent\n"+
			"NAME and deployment D, and to no other. An empty deployment is production. A ROOM that does not\n"+
			"exist yet is created with the dispatch in its configuration (no automatic agent job ahead of it).\n"+
			"With --wait D it returns once a worker took the job, or fails after D.")
	c := addConn(f)
	room := f.fs.String("room", "", "room to dispatch the agent into")
	agentName := f.fs.String("agent-name", "", "agent name the workers registered with")
	deployment := f.fs.String("deployment", "", "deployment to dispatch to; empty is production")
	metadata := f.fs.String("metadata", "", "metadata handed to the job")
	wait := f.fs.Duration("wait", 0, "wait up to this long until a worker took the job (0: do not wait)")
	asJSON := f.fs.Bool("json", false, "print JSON instead of a table")
	f.env("room", "LKAGENT_ROOM")
	f.env("agent-name", "LKAGENT_AGENT_NAME")
	f.env("deployment", worker.EnvDeployment)
	f.required("room", "agent-name")
	if err := f.parse(e, args); err != nil {
		return err
	}
	if err := checkTarget(e, f, *agentName, *deployment); err != nil {
		return err
	}
	if err := c.check(name); err != nil {
		return err
	}
	f.printEnvNotes(e)
	if *wait < 0 {
		return usagef(name, "--wait must not be negative")
	}
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	dc := dispatch.NewClient(c.url, c.apiKey, c.apiSecret)
	d, err := dc.Create(rctx, &livekit.CreateAgentDispatchRequest{
		Room: *room, AgentName: *agentName, Deployment: *deployment, Metadata: *metadata,
	})
	if err != nil {
		return c.apiError(rctx, fmt.Sprintf("create dispatch of agent %q in room %q", *agentName, *room), err)
	}
	if *wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, *wait)
		defer cancel()
		j, err := dc.Wait(wctx, d)
		if err != nil {
			if ctx.Err() != nil {
				return interrupted(ctx)
			}
			return fmt.Errorf("dispatch %s created in room %q, but no worker of agent %q, deployment %s, took the job within --wait %s: %v",
				d.GetId(), *room, *agentName, deploymentLabel(*deployment), *wait, err)
		}
		// The dispatch as listed now, with its job (a held dispatch's
		// replacement, if a worker's sweep served it).
		if ds, err := dc.List(context.WithoutCancel(rctx), *room); err == nil {
			for _, x := range ds {
				if x.GetId() == j.GetDispatchId() {
					d = x
				}
			}
		}
	}
	return printDispatches(e.stdout, *asJSON, true, d)
}

func runDispatchList(ctx context.Context, e *env, args []string) error {
	const name = "dispatch list"
	f := newFlags(name, "--room ROOM [--json] [flags]",
		"Lists the agent dispatches of ROOM with their deployment and the jobs the server created for them.")
	c := addConn(f)
	room := f.fs.String("room", "", "room whose dispatches to list")
	asJSON := f.fs.Bool("json", false, "print a JSON array instead of a table")
	f.env("room", "LKAGENT_ROOM")
	f.required("room")
	if err := f.parse(e, args); err != nil {
		return err
	}
	if err := c.check(name); err != nil {
		return err
	}
	f.printEnvNotes(e)
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	res, err := dispatchClient(c).ListDispatch(rctx, &livekit.ListAgentDispatchRequest{Room: *room})
	if err != nil {
		return roomError(c.apiError(rctx, fmt.Sprintf("list dispatches of room %q", *room), err), *room, err)
	}
	if len(res.GetAgentDispatches()) == 0 && !*asJSON {
		fmt.Fprintf(e.stdout, "no dispatches in room %q\n", *room)
		return nil
	}
	return printDispatches(e.stdout, *asJSON, false, res.GetAgentDispatches()...)
}

func runDispatchDelete(ctx context.Context, e *env, args []string) error {
	const name = "dispatch delete"
	f := newFlags(name, "--room ROOM --id DISPATCH_ID [flags]",
		"Deletes an agent dispatch; the server terminates its running jobs.")
	c := addConn(f)
	room := f.fs.String("room", "", "room of the dispatch")
	id := f.fs.String("id", "", "dispatch id (AD_...), as 'dispatch create' or 'dispatch list' shows it")
	asJSON := f.fs.Bool("json", false, "print JSON instead of a table")
	f.env("room", "LKAGENT_ROOM")
	f.required("room", "id")
	if err := f.parse(e, args); err != nil {
		return err
	}
	if err := c.check(name); err != nil {
		return err
	}
	f.printEnvNotes(e)
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	d, err := dispatchClient(c).DeleteDispatch(rctx, &livekit.DeleteAgentDispatchRequest{Room: *room, DispatchId: *id})
	if err != nil {
		return roomError(c.apiError(rctx, fmt.Sprintf("delete dispatch %q of room %q", *id, *room), err), *room, err)
	}
	return printDispatches(e.stdout, *asJSON, true, d)
}

// roomError explains the answer a server gives for a room that does not
// exist (its API finds no node hosting the room), or returns explained.
func roomError(explained error, room string, err error) error {
	var te twirp.Error
	if errors.As(err, &te) && te.Code() == twirp.Unavailable && strings.Contains(te.Msg(), "no response from servers") {
		return fmt.Errorf("room %q does not exist on the server (it was never created, or it has closed)", room)
	}
	return explained
}
