package restart

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/utils/protojson"

	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/internal/testkit/wait"
)

// signed returns a webhook request for ev signed as the server signs it.
func signed(t *testing.T, ev *livekit.WebhookEvent, key, secret string) *http.Request {
	t.Helper()
	body, err := protojson.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return signedBody(t, body, body, key, secret)
}

// signedBody returns a request carrying body with a signature over signedOver.
func signedBody(t *testing.T, body, signedOver []byte, key, secret string) *http.Request {
	t.Helper()
	sum := sha256.Sum256(signedOver)
	tok, err := auth.NewAccessToken(key, secret).SetValidFor(5 * time.Minute).
		SetSha256(base64.StdEncoding.EncodeToString(sum[:])).ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPost, WebhookPath, bytes.NewReader(body))
	req.Header.Set("Authorization", tok)
	req.Header.Set("Content-Type", "application/webhook+json")
	return req
}

func agentLeft(id, room, identity string, reason livekit.DisconnectReason) *livekit.WebhookEvent {
	return &livekit.WebhookEvent{
		Id: id, Event: "participant_left", Room: &livekit.Room{Name: room},
		Participant: &livekit.ParticipantInfo{Identity: identity, Kind: livekit.ParticipantInfo_AGENT,
			Attributes: map[string]string{"lk.agent_name": "bot"}, DisconnectReason: reason, JoinedAtMs: joined.UnixMilli()},
	}
}

func serve(h http.Handler, req *http.Request) int {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code
}

// Unsigned, wrongly signed and tampered requests get 401 and change
// nothing; wrong methods and paths get 405 and 404.
func TestWebhookRefusesUnsigned(t *testing.T) {
	t.Parallel()
	api := newFake()
	api.room("r", "bot", "", "a", nil)
	r := testRestarter(t, api, Options{})
	wh := NewWebhook(r, WebhookOptions{})
	ev := agentLeft("EV_1", "r", "a", livekit.DisconnectReason_CONNECTION_TIMEOUT)
	body, _ := protojson.Marshal(ev)

	unsigned := httptest.NewRequest(http.MethodPost, WebhookPath, bytes.NewReader(body))
	otherBody := []byte(strings.Replace(string(body), `"r"`, `"x"`, 1))
	for name, req := range map[string]*http.Request{
		"unsigned":     unsigned,
		"wrong secret": signed(t, ev, "key", "not-the-secret"),
		"unknown key":  signed(t, ev, "other-key", "secret"),
		"tampered":     signedBody(t, otherBody, body, "key", "secret"),
		"garbage": func() *http.Request {
			q := signed(t, ev, "key", "secret")
			q.Header.Set("Authorization", "Bearer x.y.z")
			return q
		}(),
	} {
		if code := serve(wh, req); code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", name, code)
		}
	}
	if code := serve(wh, httptest.NewRequest(http.MethodGet, WebhookPath, nil)); code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", code)
	}
	if code := serve(wh, signedWithPath(t, ev, "/webhooks")); code != http.StatusNotFound {
		t.Errorf("other path: %d, want 404", code)
	}
	big := signedBody(t, bytes.Repeat([]byte("x"), 2<<20), []byte("x"), "key", "secret")
	if code := serve(wh, big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("2 MiB body: %d, want 413", code)
	}
	if err := wh.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(api.created) != 0 || len(api.removed) != 0 || len(api.ds["r"]) != 1 {
		t.Fatal("a refused webhook changed the room")
	}
	if n := count(r.m.webhooks, webhookUnauthorized); n != 5 {
		t.Errorf("unauthorized counted %d, want 5", n)
	}
}

func signedWithPath(t *testing.T, ev *livekit.WebhookEvent, path string) *http.Request {
	req := signed(t, ev, "key", "secret")
	req.URL.Path = path
	return req
}

// A signed failure restarts once however often it is delivered; normal
// ends and other events do not.
func TestWebhookRestartsOnce(t *testing.T) {
	t.Parallel()
	api := newFake()
	api.room("r", "bot", "staging", "a", nil)
	api.room("r2", "bot", "staging", "b", nil)
	r := testRestarter(t, api, Options{})
	wh := NewWebhook(r, WebhookOptions{})
	mux := http.NewServeMux()
	mux.Handle(WebhookPath, wh) // mounted on a mux of someone else's

	ev := agentLeft("EV_1", "r", "a", livekit.DisconnectReason_CONNECTION_TIMEOUT)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code := serve(mux, signed(t, ev, "key", "secret")); code != http.StatusOK {
				t.Errorf("delivery: %d", code)
			}
		}()
	}
	wg.Wait()
	for _, ev := range []*livekit.WebhookEvent{
		agentLeft("EV_2", "r2", "b", livekit.DisconnectReason_CLIENT_INITIATED),
		{Id: "EV_3", Event: "participant_left", Room: &livekit.Room{Name: "r2"},
			Participant: &livekit.ParticipantInfo{Identity: "caller", DisconnectReason: livekit.DisconnectReason_CONNECTION_TIMEOUT}},
		{Id: "EV_4", Event: "room_finished", Room: &livekit.Room{Name: "r2"}},
	} {
		if code := serve(mux, signed(t, ev, "key", "secret")); code != http.StatusOK {
			t.Errorf("%s: %d", ev.Id, code)
		}
	}
	if err := wh.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(api.created) != 1 || api.created[0].Room != "r" {
		t.Fatalf("created %v, want one dispatch in r", api.created)
	}
	if n := count(r.m.restarts, "bot", "staging"); n != 1 {
		t.Errorf("restarts %d", n)
	}
	if n := count(r.m.refusals, "bot", UnknownDeployment, string(NotAFailure)); n != 1 {
		t.Errorf("not_failure refusals %d", n)
	}
	for result, want := range map[string]int{webhookAccepted: 2, webhookDuplicate: 2, webhookIgnored: 2} {
		if n := count(r.m.webhooks, result); n != want {
			t.Errorf("webhooks %s: %d, want %d", result, n, want)
		}
	}
	if code := serve(mux, signed(t, agentLeft("EV_5", "r2", "b", livekit.DisconnectReason_CONNECTION_TIMEOUT), "key", "secret")); code != http.StatusServiceUnavailable {
		t.Errorf("after Close: %d, want 503", code)
	}
}

// Past MaxInFlight running restarts, a webhook is answered 503 (the server
// sends it again) and not remembered as received; Close cancels what is
// still running when its context ends.
func TestWebhookBoundedAndClosed(t *testing.T) {
	t.Parallel()
	api := newFake()
	api.room("r", "bot", "", "a", nil)
	api.room("r2", "bot", "", "b", nil)
	release := make(chan struct{})
	api.beforeDelete = func() { <-release }
	r := testRestarter(t, api, Options{})
	wh := NewWebhook(r, WebhookOptions{MaxInFlight: 1})

	if code := serve(wh, signed(t, agentLeft("EV_1", "r", "a", livekit.DisconnectReason_CONNECTION_TIMEOUT), "key", "secret")); code != http.StatusOK {
		t.Fatalf("first: %d", code)
	}
	second := agentLeft("EV_2", "r2", "b", livekit.DisconnectReason_CONNECTION_TIMEOUT)
	rec := httptest.NewRecorder()
	wh.ServeHTTP(rec, signed(t, second, "key", "secret"))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("second while full: %d %v, want 503 with Retry-After", rec.Code, rec.Header())
	}
	close(release)
	wait.Until(t, 5*time.Second, "end of the first restart", func() bool { return count(r.m.restarts, "bot", deploy.ProductionLabel) == 1 })
	// The slot is released just after the count: until then the second
	// delivery is refused as busy again, which is not an answer to it.
	var code int
	wait.Until(t, 5*time.Second, "a free slot for the second delivery", func() bool {
		code = serve(wh, signed(t, second, "key", "secret"))
		return code != http.StatusServiceUnavailable
	})
	if code != http.StatusOK {
		t.Fatalf("second again: %d, want 200 (a refused delivery is not remembered)", code)
	}
	wait.Until(t, 5*time.Second, "end of the second restart", func() bool { return count(r.m.restarts, "bot", deploy.ProductionLabel) == 2 })
	// A restart stuck in the server is cancelled by Close's deadline.
	api.room("r3", "bot", "", "c", nil)
	stuck := make(chan struct{})
	api.setBeforeDelete(func() { <-stuck })
	wait.Until(t, 5*time.Second, "a free slot", func() bool {
		return serve(wh, signed(t, agentLeft("EV_3", "r3", "c", livekit.DisconnectReason_CONNECTION_TIMEOUT), "key", "secret")) == http.StatusOK
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	go func() { <-wh.ctx.Done(); close(stuck) }()
	if err := wh.Close(ctx); err == nil {
		t.Error("Close returned nil though it had to cancel a restart")
	}
}

// A flood of forged posts is counted in full and logged once per interval,
// each line with the number of refusals left out before it.
func TestWebhookRefusalsLoggedAtABoundedRate(t *testing.T) {
	t.Parallel()
	r := testRestarter(t, newFake(), Options{})
	var log syncBuffer
	r.log = slog.New(slog.NewTextHandler(&log, nil))
	wh := NewWebhook(r, WebhookOptions{RejectLogInterval: time.Minute})
	now := time.Unix(1_000_000, 0)
	wh.rejects.now = func() time.Time { return now }
	ev := agentLeft("EV_1", "r", "a", livekit.DisconnectReason_CONNECTION_TIMEOUT)
	forge := func(n int) {
		for range n {
			if code := serve(wh, signed(t, ev, "key", "forged-secret")); code != http.StatusUnauthorized {
				t.Fatalf("forged post: %d, want 401", code)
			}
		}
	}
	forge(500)
	if n := strings.Count(log.String(), "webhook refused"); n != 1 {
		t.Fatalf("%d log lines for 500 forged posts within the interval, want 1", n)
	}
	now = now.Add(time.Minute)
	forge(1)
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "refusals_not_logged=499") {
		t.Fatalf("log after the interval:\n%s", log.String())
	}
	if n := count(r.m.webhooks, webhookUnauthorized); n != 501 {
		t.Errorf("unauthorized counted %d, want 501", n)
	}
	if err := wh.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
