package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/worker"
)

func runDev(ctx context.Context, e *env, args []string) error {
	const name = "dev"
	f := newFlags(name, "PACKAGE [--agent-name NAME] [--drain-timeout D] [flags]",
		"Runs an agent under development: builds PACKAGE (a main package, such as ./cmd/myagent) with\n"+
			"'go build', runs it against a LiveKit server (a local one it starts, unless --url or $LIVEKIT_URL\n"+
			"names one), and rebuilds and restarts it whenever a .go file of the package, or of a package of\n"+
			"the same module it imports, changes. A call in progress gets the new version's agent: the rooms\n"+
			"where an agent runs are noted, the old version is stopped (SIGTERM, then SIGKILL after\n"+
			"--drain-timeout), and once the new version runs, each of those dispatches is deleted and created\n"+
			"again (same agent name, deployment and metadata), so the new agent joins the same room. A build\n"+
			"that fails leaves the running version as it is. The agent gets LIVEKIT_URL, LIVEKIT_API_KEY and\n"+
			"LIVEKIT_API_SECRET in its environment.")
	c := addConn(f)
	agentName := f.fs.String("agent-name", "", "agent name whose dispatches move to each new version; required with --url, else empty means every agent's")
	drain := f.fs.Duration("drain-timeout", 3*time.Second, "how long an old version may drain after SIGTERM before it is killed")
	poll := f.fs.Duration("poll", 500*time.Millisecond, "how often source files are checked for changes")
	f.env("agent-name", "LKAGENT_AGENT_NAME")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && isHelpArg(args[0]) {
			return f.parse(e, args)
		}
		return usagef(name, "missing PACKAGE: the agent's main package, for example 'lkagent dev ./cmd/myagent'")
	}
	pkg := args[0]
	if err := f.parse(e, args[1:]); err != nil {
		return err
	}
	if *drain <= 0 || *poll <= 0 {
		return usagef(name, "--drain-timeout and --poll must be positive")
	}
	if *agentName != "" {
		if err := deploy.CheckAgentName(*agentName); err != nil {
			return usagef(name, "%s=%s is not a valid agent name: %v", f.source("agent-name"), deploy.Quote(*agentName), err)
		}
	}
	out := &syncWriter{w: e.stdout}
	d := &devLoop{out: out, pkg: pkg, agentName: *agentName, drain: *drain, poll: *poll}
	for _, n := range f.envNotes() {
		d.say("%s", n)
	}
	if c.url == "" {
		srv, err := startServer(ctx, e.stderr, lkserver.Options{})
		if err != nil {
			return err
		}
		defer srv.Stop()
		c.url, c.apiKey, c.apiSecret = srv.URL(), srv.APIKey(), srv.APISecret()
		d.say("started a local LiveKit server %s at %s; to talk to the agent, in another shell:", lkserver.Version, c.url)
		// As 'lkagent server' does: this server's key pair was made for
		// this run, on loopback, and the other shell needs it.
		d.say("  export LIVEKIT_URL=%s LIVEKIT_API_KEY=%s LIVEKIT_API_SECRET=%s", shellQuote(c.url), shellQuote(c.apiKey), shellQuote(c.apiSecret))
		d.say("  lkagent console --agent-name <the agent's name>")
	} else {
		if err := c.check(name); err != nil {
			return err
		}
		if *agentName == "" {
			// Another's server: moving every agent of every room to this
			// build would take over other people's calls.
			return usagef(name, "with a server of your own (%s), give --agent-name or $LKAGENT_AGENT_NAME: the agent whose calls move to each new version", f.source("url"))
		}
		d.say("LiveKit server: %s (from %s)", c.url, f.source("url"))
	}
	d.conn = c
	d.rooms = lksdk.NewRoomServiceClient(c.httpURL(), c.apiKey, c.apiSecret)
	d.dispatches = dispatchClient(c)
	return d.run(ctx)
}

// devLoop builds, runs and reloads one agent package.
type devLoop struct {
	out        io.Writer
	pkg        string
	agentName  string
	drain      time.Duration
	poll       time.Duration
	conn       *conn
	rooms      *lksdk.RoomServiceClient
	dispatches *lksdk.AgentDispatchClient
	version    int // builds so far
}

func (d *devLoop) say(format string, args ...any) {
	fmt.Fprintf(d.out, "dev: "+format+"\n", args...)
}

// run builds and runs the agent, and reloads it on every change, until ctx
// ends; then it stops the running version.
func (d *devLoop) run(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "lkagent-dev-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	var running *devChild
	defer func() {
		if running != nil {
			d.stop(running)
		}
	}()
	fp := d.fingerprint(ctx)
	if bin, ok := d.build(ctx, dir); ok {
		if running, err = d.start(bin); err != nil {
			return err
		}
	}
	tick := time.NewTicker(d.poll)
	defer tick.Stop()
	for {
		var exited <-chan struct{}
		if running != nil {
			exited = running.done
		}
		select {
		case <-ctx.Done():
			d.say("stopping")
			return nil
		case <-exited:
			d.say("agent v%d exited (%v); waiting for a change to rebuild", running.version, running.err)
			running = nil
			continue
		case <-tick.C:
		}
		if ctx.Err() != nil {
			continue // stopping: the select above returns
		}
		now := d.fingerprint(ctx)
		if now.sum == fp.sum {
			continue
		}
		changed := fp.diff(now)
		fp = now
		d.say("changed: %s; rebuilding", strings.Join(changed, ", "))
		bin, ok := d.build(ctx, dir)
		if !ok {
			continue
		}
		if running, err = d.reload(ctx, running, bin); err != nil {
			return err
		}
	}
}

// build builds the package into dir and reports how it went.
func (d *devLoop) build(ctx context.Context, dir string) (string, bool) {
	d.version++
	bin := filepath.Join(dir, fmt.Sprintf("agent-v%d", d.version))
	started := time.Now()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, d.pkg).CombinedOutput()
	if err != nil {
		d.version--
		d.say("build of %s failed (%v); the running version, if any, stays:\n%s", d.pkg, err, strings.TrimRight(string(out), "\n"))
		return "", false
	}
	d.say("built %s as v%d in %s", d.pkg, d.version, time.Since(started).Round(time.Millisecond))
	return bin, true
}

// devChild is a running version of the agent.
type devChild struct {
	version int
	cmd     *exec.Cmd
	done    chan struct{} // closed when it exited; err is then set
	err     error
}

// start runs bin; a goroutine waits for its exit.
func (d *devLoop) start(bin string) (*devChild, error) {
	ch := &devChild{version: d.version, done: make(chan struct{})}
	ch.cmd = exec.Command(bin)
	ch.cmd.Env = append(os.Environ(),
		worker.EnvURL+"="+d.conn.url, worker.EnvAPIKey+"="+d.conn.apiKey, worker.EnvAPISecret+"="+d.conn.apiSecret)
	w := &prefixWriter{w: d.out, prefix: fmt.Sprintf("agent v%d | ", d.version)}
	ch.cmd.Stdout, ch.cmd.Stderr = w, w
	if err := ch.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the agent: %w", err)
	}
	go func() {
		ch.err = ch.cmd.Wait()
		close(ch.done)
	}()
	d.say("started agent v%d (pid %d)", ch.version, ch.cmd.Process.Pid)
	return ch, nil
}

// stop sends SIGTERM to ch, and SIGKILL after the drain timeout.
func (d *devLoop) stop(ch *devChild) {
	_ = ch.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ch.done:
		d.say("agent v%d stopped", ch.version)
	case <-time.After(d.drain):
		_ = ch.cmd.Process.Kill()
		<-ch.done
		d.say("agent v%d killed: still running %s after SIGTERM", ch.version, d.drain)
	}
}

// reload replaces old (nil: none runs) with a new version built as bin,
// and moves the calls in progress to it.
func (d *devLoop) reload(ctx context.Context, old *devChild, bin string) (*devChild, error) {
	var moves []*livekit.AgentDispatch
	if old != nil {
		moves = d.activeDispatches(ctx)
		for _, m := range moves {
			d.say("room %s: agent %s, deployment %s, is in a call; it moves to v%d", deploy.Escape(m.GetRoom()),
				deploy.Escape(m.GetAgentName()), deploymentLabel(m.GetDeployment()), d.version)
		}
		// SIGTERM first: a draining worker takes no new job, so that the
		// dispatches made below go to the new version.
		_ = old.cmd.Process.Signal(syscall.SIGTERM)
		d.say("agent v%d drains (SIGTERM)", old.version)
	}
	next, err := d.start(bin)
	if err != nil {
		return nil, err
	}
	for _, m := range moves {
		d.redispatch(ctx, m)
	}
	if old != nil {
		d.stop(old)
	}
	return next, nil
}

// activeDispatches returns the dispatches, of the agent name when one is
// set, whose agent is in its room now. ListDispatch alone cannot tell: it
// lists a job as running after it ended.
func (d *devLoop) activeDispatches(ctx context.Context) []*livekit.AgentDispatch {
	rctx, cancel := context.WithTimeout(ctx, d.conn.timeout)
	defer cancel()
	rooms, err := d.rooms.ListRooms(rctx, &livekit.ListRoomsRequest{})
	if err != nil {
		d.say("cannot list rooms (%v): calls in progress will not move to the new version", err)
		return nil
	}
	var out []*livekit.AgentDispatch
	for _, r := range rooms.GetRooms() {
		agents := d.agentsIn(rctx, r.GetName())
		if len(agents) == 0 {
			continue
		}
		ds, err := d.dispatches.ListDispatch(rctx, &livekit.ListAgentDispatchRequest{Room: r.GetName()})
		if err != nil {
			d.say("room %s: cannot list dispatches: %v", deploy.Escape(r.GetName()), err)
			continue
		}
		for _, ad := range ds.GetAgentDispatches() {
			if n := ad.GetAgentName(); n != "" && (d.agentName == "" || n == d.agentName) && slices.Contains(agents, n) {
				out = append(out, ad)
			}
		}
	}
	return out
}

// agentsIn returns the agent names of the agent participants in room, one
// entry each.
func (d *devLoop) agentsIn(ctx context.Context, room string) []string {
	ps, err := d.rooms.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: room})
	if err != nil {
		return nil
	}
	var names []string
	for _, p := range ps.GetParticipants() {
		if p.GetKind() == livekit.ParticipantInfo_AGENT {
			names = append(names, p.GetAttributes()["lk.agent_name"])
		}
	}
	return names
}

// agentIdentities returns the identities of the agent participants of
// agentName in room.
func (d *devLoop) agentIdentities(ctx context.Context, room, agentName string) []string {
	ps, err := d.rooms.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: room})
	if err != nil {
		return nil
	}
	var ids []string
	for _, p := range ps.GetParticipants() {
		if p.GetKind() == livekit.ParticipantInfo_AGENT && p.GetAttributes()["lk.agent_name"] == agentName {
			ids = append(ids, p.GetIdentity())
		}
	}
	return ids
}

// redispatch replaces dispatch old by a new one of the same agent,
// deployment, metadata and attributes, until an agent other than the ones in the room
// now joins: a dispatch made before the new version registered is dropped
// by the server, never to be retried.
func (d *devLoop) redispatch(ctx context.Context, old *livekit.AgentDispatch) {
	room, name := old.GetRoom(), old.GetAgentName()
	before := d.agentIdentities(ctx, room, name)
	current := old
	deadline := time.Now().Add(time.Minute)
	for attempt := 1; ctx.Err() == nil; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, d.conn.timeout)
		if current != nil {
			_, _ = d.dispatches.DeleteDispatch(rctx, &livekit.DeleteAgentDispatchRequest{Room: room, DispatchId: current.GetId()})
		}
		nd, err := d.dispatches.CreateDispatch(rctx, &livekit.CreateAgentDispatchRequest{
			Room: room, AgentName: name, Deployment: old.GetDeployment(), Metadata: old.GetMetadata(),
			Attributes: old.GetAttributes(), RestartPolicy: old.GetRestartPolicy(), ThreadId: old.GetThreadId(),
		})
		cancel()
		if err != nil {
			d.say("room %s: cannot dispatch agent %s again: %v", deploy.Escape(room), deploy.Escape(name), err)
			return
		}
		current = nd
		// Wait for a new agent participant: a few seconds, then the
		// dispatch is made again.
		// 1s, 2s, then 3s: right after the new version registered, the
		// server may not route to it yet and drops the job.
		wait := time.Now().Add(time.Duration(min(attempt, 3)) * time.Second)
		for time.Now().Before(wait) && ctx.Err() == nil {
			for _, id := range d.agentIdentities(ctx, room, name) {
				if !slices.Contains(before, id) {
					d.say("room %s: agent %s v%d joined as %s (dispatch %s)", deploy.Escape(room), deploy.Escape(name),
						d.version, deploy.Escape(id), nd.GetId())
					return
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
		if time.Now().After(deadline) {
			d.say("room %s: no agent %s of v%d joined within a minute (attempt %d)", deploy.Escape(room), deploy.Escape(name), d.version, attempt)
			return
		}
	}
}

// fileSet is what the watched source files looked like.
type fileSet struct {
	sum   string            // every file's path, size and mtime
	files map[string]string // path → size and mtime
}

// diff names the files that differ between s and t.
func (s fileSet) diff(t fileSet) []string {
	var out []string
	for p, v := range t.files {
		if s.files[p] != v {
			out = append(out, filepath.Base(p))
		}
	}
	for p := range s.files {
		if _, ok := t.files[p]; !ok {
			out = append(out, filepath.Base(p)+" (removed)")
		}
	}
	slices.Sort(out)
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("and %d more", len(out)-5))
	}
	return out
}

// fingerprint lists the .go files of the package and of the packages of
// the same module it imports ('go list -deps'), with their sizes and
// modification times.
func (d *devLoop) fingerprint(ctx context.Context) fileSet {
	fs := fileSet{files: map[string]string{}}
	out, err := exec.CommandContext(ctx, "go", "list", "-deps", "-f",
		"{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", d.pkg).Output()
	dirs := strings.Fields(string(out))
	if err != nil || len(dirs) == 0 {
		// A package that does not build yet: its own directory.
		abs, _ := filepath.Abs(d.pkg)
		dirs = []string{abs}
	}
	var sum bytes.Buffer
	for _, dir := range dirs {
		matches, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, m := range matches {
			st, err := os.Stat(m)
			if err != nil {
				continue
			}
			v := fmt.Sprintf("%d %d", st.Size(), st.ModTime().UnixNano())
			fs.files[m] = v
		}
	}
	paths := make([]string, 0, len(fs.files))
	for p := range fs.files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		fmt.Fprintf(&sum, "%s %s\n", p, fs.files[p])
	}
	fs.sum = sum.String()
	return fs
}
