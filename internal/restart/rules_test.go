package restart

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/deploy"
)

// The reason table, for every DisconnectReason the protocol defines: a new
// value must be placed on one side or the other on purpose.
func TestIsFailure(t *testing.T) {
	t.Parallel()
	want := map[livekit.DisconnectReason]bool{
		livekit.DisconnectReason_UNKNOWN_REASON:      false,
		livekit.DisconnectReason_CLIENT_INITIATED:    false,
		livekit.DisconnectReason_DUPLICATE_IDENTITY:  false,
		livekit.DisconnectReason_SERVER_SHUTDOWN:     false,
		livekit.DisconnectReason_PARTICIPANT_REMOVED: false,
		livekit.DisconnectReason_ROOM_DELETED:        false,
		livekit.DisconnectReason_STATE_MISMATCH:      true,
		livekit.DisconnectReason_JOIN_FAILURE:        true,
		livekit.DisconnectReason_MIGRATION:           false,
		livekit.DisconnectReason_SIGNAL_CLOSE:        true,
		livekit.DisconnectReason_ROOM_CLOSED:         false,
		livekit.DisconnectReason_USER_UNAVAILABLE:    false,
		livekit.DisconnectReason_USER_REJECTED:       false,
		livekit.DisconnectReason_SIP_TRUNK_FAILURE:   false,
		livekit.DisconnectReason_CONNECTION_TIMEOUT:  true,
		livekit.DisconnectReason_MEDIA_FAILURE:       true,
		livekit.DisconnectReason_AGENT_ERROR:         true,
	}
	for v, name := range livekit.DisconnectReason_name {
		r := livekit.DisconnectReason(v)
		w, ok := want[r]
		if !ok {
			t.Errorf("DisconnectReason %s is not in the table: decide whether it is a failure", name)
			continue
		}
		if got := IsFailure(name); got != w {
			t.Errorf("IsFailure(%s) = %v, want %v", name, got, w)
		}
	}
	for _, s := range []string{"", "crashed", "connection_timeout", "14"} {
		if IsFailure(s) {
			t.Errorf("IsFailure(%q) = true", s)
		}
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		done int
		want time.Duration
	}{{0, 0}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {6, 32 * time.Second}, {7, time.Minute}, {40, time.Minute}} {
		if got := backoff(tc.done, time.Second, time.Minute); got != tc.want {
			t.Errorf("backoff(%d) = %s, want %s", tc.done, got, tc.want)
		}
	}
}

// The decision rules, one case each, against the in-memory server.
func TestDecide(t *testing.T) {
	t.Parallel()
	const room, agent, dep, id = "r", "bot", "staging", "agent-AJ_1"
	fail := Failure{Room: room, AgentName: agent, Identity: id, Reason: "CONNECTION_TIMEOUT", JoinedAt: joined}
	withAttrs := func(n int, since time.Time) func(*livekit.AgentDispatch) {
		return func(d *livekit.AgentDispatch) {
			d.Attributes[AttrRestarts] = strconv.Itoa(n)
			d.Attributes[AttrRestartWindow] = strconv.FormatInt(since.UnixMilli(), 10)
		}
	}
	for _, tc := range []struct {
		name   string
		setup  func(f *fakeAPI)
		fail   func(f *Failure)
		want   Outcome
		err    string
		chain  string // AttrRestarts of the new dispatch
		checks func(t *testing.T, f *fakeAPI, d Decision)
	}{
		{name: "connection timeout restarts", want: Restarted, chain: "1", checks: func(t *testing.T, f *fakeAPI, d Decision) {
			req := f.created[0]
			if req.AgentName != agent || req.Deployment != dep || req.Metadata != "meta" || req.Room != room ||
				req.RestartPolicy != livekit.JobRestartPolicy_JRP_ON_FAILURE || req.Attributes["user"] != "attr" || req.ThreadId != "AT_1" {
				t.Errorf("new dispatch %v does not repeat the failed one", req)
			}
			if len(f.removed) != 1 || f.removed[0] != room+"/"+id {
				t.Errorf("removed %v, want the failed agent", f.removed)
			}
			if len(f.ds[room]) != 1 || f.ds[room][0].Id != d.NewDispatch || d.FailedDispatch != "AD_1" {
				t.Errorf("dispatches after: %v (decision %+v)", f.ds[room], d)
			}
			if d.Attempt != 1 || d.Deployment != dep {
				t.Errorf("decision %+v", d)
			}
		}},
		{name: "agent error restarts", fail: func(f *Failure) { f.Reason = "AGENT_ERROR" }, want: Restarted, chain: "1"},
		{name: "by job id", fail: func(f *Failure) { f.Identity, f.JobID = "", "AJ_1" }, want: Restarted, chain: "1",
			checks: func(t *testing.T, f *fakeAPI, _ Decision) {
				if len(f.removed) != 1 || f.removed[0] != room+"/"+id {
					t.Errorf("removed %v, want the job's identity", f.removed)
				}
			}},
		{name: "client initiated is a normal end", fail: func(f *Failure) { f.Reason = "CLIENT_INITIATED" }, want: NotAFailure},
		{name: "removed", fail: func(f *Failure) { f.Reason = "PARTICIPANT_REMOVED" }, want: NotAFailure},
		{name: "room deleted", fail: func(f *Failure) { f.Reason = "ROOM_DELETED" }, want: NotAFailure},
		{name: "policy never", setup: func(f *fakeAPI) {
			f.ds[room][0].RestartPolicy = livekit.JobRestartPolicy_JRP_NEVER
		}, want: PolicyNever},
		{name: "room gone", setup: func(f *fakeAPI) { delete(f.rooms, room) }, want: RoomGone},
		{name: "only agents left", setup: func(f *fakeAPI) {
			f.parts[room] = append(f.parts[room][1:],
				&livekit.ParticipantInfo{Identity: "other-agent", Kind: livekit.ParticipantInfo_AGENT},
				&livekit.ParticipantInfo{Identity: "recorder", Kind: livekit.ParticipantInfo_EGRESS},
				&livekit.ParticipantInfo{Identity: "gone", Kind: livekit.ParticipantInfo_STANDARD, State: livekit.ParticipantInfo_DISCONNECTED})
		}, want: RoomEmpty},
		{name: "a SIP caller counts", setup: func(f *fakeAPI) {
			f.parts[room] = append(f.parts[room][1:], &livekit.ParticipantInfo{Identity: "phone", Kind: livekit.ParticipantInfo_SIP})
		}, want: Restarted, chain: "1"},
		{name: "dispatch deleted (job terminated)", setup: func(f *fakeAPI) { f.ds[room] = nil }, want: AlreadyHandled},
		{name: "other agent name", fail: func(f *Failure) { f.AgentName = "other" }, want: AlreadyHandled},
		{name: "other dispatch id", fail: func(f *Failure) { f.DispatchID = "AD_9" }, want: AlreadyHandled},
		{name: "identity reused by a later job", setup: func(f *fakeAPI) {
			f.ds[room][0].State.Jobs[0].State.StartedAt = joined.Add(time.Second).UnixNano()
		}, want: AlreadyHandled},
		{name: "claimed by another process meanwhile", setup: func(f *fakeAPI) {
			f.beforeDelete = func() { f.mu.Lock(); f.ds[room] = nil; f.mu.Unlock() }
		}, want: AlreadyHandled},
		{name: "publisher job", setup: func(f *fakeAPI) {
			f.ds[room][0].State.Jobs[0].Type = livekit.JobType_JT_PUBLISHER
		}, want: UnsupportedJob},
		{name: "cap reached by the chain", setup: func(f *fakeAPI) {
			withAttrs(3, time.Now().Add(-time.Minute))(f.ds[room][0])
		}, want: CapReached},
		{name: "count of an old window starts over", setup: func(f *fakeAPI) {
			withAttrs(3, time.Now().Add(-11*time.Minute))(f.ds[room][0])
		}, want: Restarted, chain: "1"},
		{name: "chain continues", setup: func(f *fakeAPI) {
			withAttrs(2, time.Now().Add(-time.Minute))(f.ds[room][0])
		}, want: Restarted, chain: "3", checks: func(t *testing.T, f *fakeAPI, d Decision) {
			if d.Attempt != 3 {
				t.Errorf("attempt %d, want 3", d.Attempt)
			}
		}},
		{name: "garbled chain attributes count as none", setup: func(f *fakeAPI) {
			f.ds[room][0].Attributes[AttrRestarts] = "many"
		}, want: Restarted, chain: "1"},
		{name: "reason is required", fail: func(f *Failure) { f.Reason = "" }, err: "needs Room"},
		{name: "reason must be a disconnect reason", fail: func(f *Failure) { f.Reason = "crashed" }, err: "not a livekit.DisconnectReason"},
		{name: "room is required", fail: func(f *Failure) { f.Room = "" }, err: "needs Room"},
		{name: "server error", setup: func(f *fakeAPI) { f.fail["dispatches"] = errors.New("boom") }, err: "boom"},
		{name: "claim error", setup: func(f *fakeAPI) { f.fail["deleteDispatch"] = errors.New("boom") }, err: "claim dispatch"},
		{name: "create error after the claim", setup: func(f *fakeAPI) { f.fail["createDispatch"] = errors.New("boom") }, err: "could not be created"},
		{name: "remove error is not fatal", setup: func(f *fakeAPI) { f.fail["removeParticipant"] = errors.New("boom") }, want: Restarted, chain: "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := newFake()
			api.room(room, agent, dep, id, nil)
			if tc.setup != nil {
				tc.setup(api)
			}
			f := fail
			if tc.fail != nil {
				tc.fail(&f)
			}
			r := testRestarter(t, api, Options{Backoff: time.Millisecond, MaxBackoff: time.Millisecond})
			d, err := r.Restart(context.Background(), f)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one with %q", err, tc.err)
				}
				if n := count(r.m.errors, f.AgentName, deploy.Label(d.Deployment)); n != 1 {
					t.Errorf("errors counted %d, want 1", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Outcome != tc.want {
				t.Fatalf("outcome %s (%s), want %s", d.Outcome, d.Detail, tc.want)
			}
			if tc.want == Restarted {
				if n := count(r.m.restarts, agent, dep); n != 1 {
					t.Errorf("restarts counted %d", n)
				}
				if got := api.created[0].Attributes[AttrRestarts]; got != tc.chain {
					t.Errorf("%s = %q, want %q", AttrRestarts, got, tc.chain)
				}
			} else {
				if len(api.created) != 0 || len(api.removed) != 0 {
					t.Errorf("refused, yet created %v and removed %v", api.created, api.removed)
				}
				if n := count(r.m.refusals, f.AgentName, deploy.Label(d.Deployment), string(tc.want)); n != 1 {
					t.Errorf("refusal %s counted %d", tc.want, n)
				}
			}
			if tc.checks != nil {
				tc.checks(t, api, d)
			}
		})
	}
}

// A key restarted MaxRestarts times by this process is refused even when
// its dispatches carry no count (two dispatches of one agent in a room),
// and restarts of one key are spaced by the backoff.
func TestLocalCapAndBackoff(t *testing.T) {
	t.Parallel()
	api := newFake()
	r := testRestarter(t, api, Options{MaxRestarts: 2, Backoff: 150 * time.Millisecond, MaxBackoff: time.Second})
	for i, want := range []Outcome{Restarted, Restarted, CapReached} {
		id := "agent-" + strconv.Itoa(i)
		api.room("r", "bot", "", id, nil) // a fresh chain each time
		d, err := r.Restart(context.Background(), Failure{Room: "r", AgentName: "bot", Identity: id, Reason: "AGENT_ERROR"})
		if err != nil {
			t.Fatal(err)
		}
		if d.Outcome != want {
			t.Fatalf("failure %d: %s (%s), want %s", i, d.Outcome, d.Detail, want)
		}
	}
	var created []time.Time
	for _, d := range api.ds["r"] {
		if d.Attributes[AttrRestarts] != "" {
			created = append(created, time.Unix(0, d.State.CreatedAt))
		}
	}
	if len(created) != 2 {
		t.Fatalf("%d replacements, want 2", len(created))
	}
	if gap := created[1].Sub(created[0]); gap < 140*time.Millisecond {
		t.Errorf("second restart %s after the first, want at least the backoff (150ms)", gap)
	}
	if n := count(r.m.refusals, "bot", deploy.ProductionLabel, string(CapReached)); n != 1 {
		t.Errorf("cap_reached counted %d", n)
	}
}

// The chain's backoff counts from the failed dispatch's creation, so it
// holds across processes; a context that ends first stops the wait.
func TestChainBackoffWaitsAndStops(t *testing.T) {
	t.Parallel()
	api := newFake()
	api.room("r", "bot", "", "a", func(d *livekit.AgentDispatch) {
		d.Attributes[AttrRestarts] = "2"
		d.Attributes[AttrRestartWindow] = strconv.FormatInt(time.Now().UnixMilli(), 10)
		d.State.CreatedAt = time.Now().UnixNano()
	})
	r := testRestarter(t, api, Options{Backoff: time.Second, MaxBackoff: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.Restart(ctx, Failure{Room: "r", Identity: "a", Reason: "AGENT_ERROR"})
	if err == nil || !strings.Contains(err.Error(), "backoff") {
		t.Fatalf("err = %v, want the backoff wait cut short", err)
	}
	if took := time.Since(start); took < 250*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("returned after %s", took)
	}
	if len(api.created) != 0 || len(api.ds["r"]) != 1 {
		t.Error("a restart whose wait was cut short changed the room")
	}
}

// Restarters sharing nothing but the server, given one failure at once:
// one restarts, the others find it handled.
func TestConcurrentRestartersRestartOnce(t *testing.T) {
	t.Parallel()
	for round := range 20 {
		api := newFake()
		api.room("r", "bot", "", "a", nil)
		var wg sync.WaitGroup
		outcomes := make([]Outcome, 4)
		for i := range outcomes {
			r := testRestarter(t, api, Options{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				// As from a webhook: the identity and when it joined.
				d, err := r.Restart(context.Background(), Failure{Room: "r", AgentName: "bot", Identity: "a", Reason: "CONNECTION_TIMEOUT", JoinedAt: joined})
				if err != nil {
					t.Error(err)
				}
				outcomes[i] = d.Outcome
			}()
		}
		wg.Wait()
		restarted := 0
		for _, o := range outcomes {
			switch o {
			case Restarted:
				restarted++
			case AlreadyHandled:
			default:
				t.Errorf("round %d: outcome %s", round, o)
			}
		}
		if restarted != 1 || len(api.created) != 1 {
			t.Fatalf("round %d: %d restarted, %d created, want 1 (%v)", round, restarted, len(api.created), outcomes)
		}
	}
}

// One Restarter told of one failure twice (by its worker and by a
// webhook) while the first decision is under way: the second waits for it
// and decides afresh. It refuses for the same reason, and when the first
// could not decide (the server failed it), it restarts.
func TestSameFailureTwiceWaitsForTheFirstDecision(t *testing.T) {
	t.Parallel()
	asCall := Failure{Room: "r", AgentName: "bot", Identity: "a", JobID: "AJ_1", Reason: "AGENT_ERROR"}
	asWebhook := Failure{Room: "r", AgentName: "bot", Identity: "a", Reason: "SIGNAL_CLOSE", JoinedAt: joined}
	// both makes the two calls, the second once the first is under way:
	// held by the fake, which closes underway when it holds it.
	both := func(t *testing.T, r *Restarter, underway <-chan struct{}) (first, second Decision, firstErr, secondErr error) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			first, firstErr = r.Restart(context.Background(), asCall)
		}()
		select {
		case <-underway:
		case <-done:
			t.Fatal("the first call ended before the fake held it")
		}
		second, secondErr = r.Restart(context.Background(), asWebhook)
		<-done
		return
	}

	t.Run("same refusal", func(t *testing.T) {
		t.Parallel()
		api := newFake()
		api.room("r", "bot", "", "a", func(d *livekit.AgentDispatch) { d.RestartPolicy = livekit.JobRestartPolicy_JRP_NEVER })
		var lists atomic.Int32
		underway := make(chan struct{})
		api.beforeList = func() {
			if lists.Add(1) == 1 {
				close(underway)
				time.Sleep(300 * time.Millisecond)
			}
		}
		r := testRestarter(t, api, Options{})
		first, second, err1, err2 := both(t, r, underway)
		if err1 != nil || err2 != nil || first.Outcome != PolicyNever || second.Outcome != PolicyNever {
			t.Fatalf("decisions %+v (%v) and %+v (%v), want policy_never twice", first, err1, second, err2)
		}
		if n := count(r.m.refusals, "bot", deploy.ProductionLabel, string(PolicyNever)); n != 2 {
			t.Errorf("policy_never refusals %d, want 2", n)
		}
	})

	t.Run("first failed", func(t *testing.T) {
		t.Parallel()
		api := newFake()
		api.room("r", "bot", "", "a", nil)
		var deletes atomic.Int32
		underway := make(chan struct{})
		api.beforeDelete = func() {
			n := deletes.Add(1)
			if n == 1 {
				close(underway)
				time.Sleep(300 * time.Millisecond)
			}
			api.mu.Lock()
			defer api.mu.Unlock()
			if n == 1 {
				api.fail["deleteDispatch"] = errors.New("server unavailable")
			} else {
				delete(api.fail, "deleteDispatch")
			}
		}
		r := testRestarter(t, api, Options{})
		first, second, err1, err2 := both(t, r, underway)
		if err1 == nil || err2 != nil || second.Outcome != Restarted {
			t.Fatalf("decisions %+v (%v) and %+v (%v), want an error, then restarted", first, err1, second, err2)
		}
		if len(api.created) != 1 {
			t.Errorf("%d dispatches created, want 1", len(api.created))
		}
	})

	t.Run("first restarted", func(t *testing.T) {
		t.Parallel()
		api := newFake()
		api.room("r", "bot", "", "a", nil)
		var deletes atomic.Int32
		underway := make(chan struct{})
		api.beforeDelete = func() {
			if deletes.Add(1) == 1 {
				close(underway)
				time.Sleep(300 * time.Millisecond)
			}
		}
		r := testRestarter(t, api, Options{})
		first, second, err1, err2 := both(t, r, underway)
		if err1 != nil || err2 != nil || first.Outcome != Restarted || second.Outcome != AlreadyHandled {
			t.Fatalf("decisions %+v (%v) and %+v (%v), want restarted, then already handled", first, err1, second, err2)
		}
		if len(api.created) != 1 {
			t.Errorf("%d dispatches created, want 1", len(api.created))
		}
	})
}

func TestOptions(t *testing.T) {
	t.Parallel()
	env := map[string]string{EnvURL: "ws://h:7880", EnvAPIKey: "k", EnvAPISecret: "s3cr3t-value"}
	getenv := func(k string) string { return env[k] }
	o, err := Options{}.withDefaults(getenv)
	if err != nil {
		t.Fatal(err)
	}
	if o.URL != "ws://h:7880" || o.APIKey != "k" || o.MaxRestarts != DefaultMaxRestarts || o.Window != DefaultWindow ||
		o.Backoff != DefaultBackoff || o.MaxBackoff != DefaultMaxBackoff || o.APITimeout != DefaultAPITimeout {
		t.Errorf("defaults: %+v", o)
	}
	if got := httpURL("wss://h/x"); got != "https://h/x" {
		t.Errorf("httpURL = %s", got)
	}
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{URL: "ftp://h", APIKey: "k", APISecret: "s3cr3t-value"}, "scheme must be ws, wss, http or https"},
		{Options{URL: "ws://", APIKey: "k", APISecret: "s3cr3t-value"}, "has no host"},
		{Options{URL: "ws://u:s3cr3t-value@h", APIKey: "k", APISecret: "s3cr3t-value"}, "must not carry a user or password"},
		{Options{URL: "ws://h", APISecret: "s3cr3t-value"}, "APIKey: required: set Options.APIKey or LIVEKIT_API_KEY"},
		{Options{URL: "ws://h", APIKey: "k"}, "APISecret: required"},
		{Options{URL: "ws://h", APIKey: "k", APISecret: "s3cr3t-value", MaxRestarts: -1}, "at least 1"},
		{Options{URL: "ws://h", APIKey: "k", APISecret: "s3cr3t-value", Window: -time.Second}, "Window"},
		{Options{URL: "ws://h", APIKey: "k", APISecret: "s3cr3t-value", Backoff: time.Hour}, "must not exceed MaxBackoff"},
	} {
		_, err := tc.o.withDefaults(func(string) string { return "" })
		var oe *OptionError
		if !errors.As(err, &oe) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want an OptionError with %q", tc.o, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3t-value") {
			t.Errorf("error shows the secret: %v", err)
		}
	}
	if _, err := (Options{}).withDefaults(func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "LIVEKIT_URL") {
		t.Errorf("no URL: %v", err)
	}
}

// The server lists a job in its dispatch only once the launch completes,
// which can be seconds after its agent joined: a failure that comes first
// waits for the listing, a bounded time, and only for a recent dispatch.
func TestWaitsForJobListedLate(t *testing.T) {
	t.Parallel()
	setup := func(created time.Time) (*fakeAPI, *livekit.Job) {
		api := newFake()
		d := api.room("r", "bot", "", "a", nil)
		j := d.State.Jobs[0]
		d.State.Jobs, d.State.CreatedAt = nil, created.UnixNano()
		return api, j
	}
	f := Failure{Room: "r", AgentName: "bot", Identity: "a", Reason: "AGENT_ERROR"}

	api, j := setup(time.Now())
	go func() {
		time.Sleep(400 * time.Millisecond)
		api.mu.Lock()
		api.ds["r"][0].State.Jobs = []*livekit.Job{j}
		api.mu.Unlock()
	}()
	r := testRestarter(t, api, Options{})
	if d, err := r.Restart(context.Background(), f); err != nil || d.Outcome != Restarted {
		t.Fatalf("job listed late: %+v, %v; want restarted", d, err)
	}

	api, _ = setup(time.Now())
	r = testRestarter(t, api, Options{})
	r.pendingWait = 300 * time.Millisecond
	start := time.Now()
	if d, err := r.Restart(context.Background(), f); err != nil || d.Outcome != AlreadyHandled {
		t.Fatalf("job never listed: %+v, %v; want already handled", d, err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("gave up after %s, before the wait", took)
	}

	api, _ = setup(time.Now().Add(-time.Hour))
	r = testRestarter(t, api, Options{})
	start = time.Now()
	if d, err := r.Restart(context.Background(), f); err != nil || d.Outcome != AlreadyHandled {
		t.Fatalf("old dispatch without a job: %+v, %v; want already handled", d, err)
	}
	if took := time.Since(start); took > 200*time.Millisecond {
		t.Errorf("waited %s for a dispatch that was never going to get a job", took)
	}
}
