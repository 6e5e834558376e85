package workertest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
)

// With NoRecord the server keeps nothing, OnMessage sees every message in
// order, and offers are still answered.
func TestNoRecordAndOnMessage(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	srv := NewServerWithOptions(t, Options{NoRecord: true, OnMessage: func(c *Conn, m *livekit.WorkerMessage) {
		if c.WorkerID() == "" {
			t.Errorf("OnMessage called before the registration was answered")
		}
		mu.Lock()
		defer mu.Unlock()
		switch x := m.GetMessage().(type) {
		case *livekit.WorkerMessage_Availability:
			seen = append(seen, "availability "+x.Availability.GetJobId())
		case *livekit.WorkerMessage_UpdateJob:
			seen = append(seen, "job "+x.UpdateJob.GetJobId()+" "+x.UpdateJob.GetStatus().String())
		case *livekit.WorkerMessage_UpdateWorker:
			seen = append(seen, "worker")
		case *livekit.WorkerMessage_Ping:
			seen = append(seen, "ping")
		}
	}})
	c, _, err := dialRaw(t, srv, agentToken(t, "k", "s", true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.register(""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := srv.WaitWorker(ctx)
	if err != nil {
		t.Fatal(err)
	}

	j := NewJob("raw", "")
	res := make(chan *livekit.AvailabilityResponse, 1)
	go func() {
		r, err := conn.Offer(ctx, j)
		if err != nil {
			t.Error(err)
		}
		res <- r
	}()
	if m, err := c.read(); err != nil || m.GetAvailability().GetJob().GetId() != j.GetId() {
		t.Fatalf("offer received: %v %v", m, err)
	}
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Availability{Availability: &livekit.AvailabilityResponse{
		JobId: j.GetId(), Available: true}}})
	if r := <-res; !r.GetAvailable() {
		t.Fatalf("answer %v", r)
	}
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateJob{UpdateJob: &livekit.UpdateJobStatus{
		JobId: j.GetId(), Status: livekit.JobStatus_JS_SUCCESS}}})
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateWorker{UpdateWorker: &livekit.UpdateWorkerStatus{Seq: 1}}})
	c.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Ping{Ping: &livekit.WorkerPing{Timestamp: 5}}})
	// The pong comes after everything before the ping was handled.
	if m, err := c.read(); err != nil || m.GetPong().GetLastTimestamp() != 5 {
		t.Fatalf("answer to a ping: %v %v", m, err)
	}

	mu.Lock()
	got := append([]string(nil), seen...)
	mu.Unlock()
	want := []string{"availability " + j.GetId(), "job " + j.GetId() + " JS_SUCCESS", "worker", "ping"}
	if len(got) != len(want) {
		t.Fatalf("OnMessage saw %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("OnMessage saw %q, want %q", got, want)
		}
	}
	if n := len(conn.Messages()) + len(conn.JobStatuses()) + len(conn.WorkerStatuses()) + len(srv.JobStatuses()); n != 0 {
		t.Errorf("%d messages recorded with NoRecord", n)
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if _, err := conn.WaitJobStatus(short, j.GetId(), livekit.JobStatus_JS_SUCCESS); err == nil {
		t.Errorf("WaitJobStatus found a status that was not recorded")
	}
}
