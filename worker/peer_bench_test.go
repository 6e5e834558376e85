package worker_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/proto"
)

// peer is the smallest server side of the /agent protocol: it registers one
// worker and hands the benchmark callbacks for what the worker sends, and
// records nothing, so a long run measures the worker and not the peer.
// (workertest.Server records every message, which is what tests want.)
type peer struct {
	hs    *httptest.Server
	conns chan *peerConn
}

type peerConn struct {
	ws      *websocket.Conn
	writeMu sync.Mutex
	done    chan struct{}

	mu       sync.Mutex
	onAvail  func(*livekit.AvailabilityResponse, time.Time)
	onStatus func(*livekit.UpdateJobStatus, time.Time)
}

func newPeer(tb testing.TB) *peer {
	p := &peer{conns: make(chan *peerConn, 4)}
	up := websocket.Upgrader{}
	p.hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		c := &peerConn{ws: ws, done: make(chan struct{})}
		defer close(c.done)
		if _, _, err := ws.ReadMessage(); err != nil { // the registration
			return
		}
		if c.send(&livekit.ServerMessage{Message: &livekit.ServerMessage_Register{Register: &livekit.RegisterWorkerResponse{WorkerId: "AW_bench"}}}) != nil {
			return
		}
		p.conns <- c
		c.readLoop()
	}))
	tb.Cleanup(p.hs.Close)
	return p
}

func (p *peer) url() string { return "ws://" + strings.TrimPrefix(p.hs.URL, "http://") }

func (p *peer) wait(tb testing.TB) *peerConn {
	select {
	case c := <-p.conns:
		return c
	case <-time.After(10 * time.Second):
		tb.Fatal("the worker did not register with the peer")
		return nil
	}
}

func (c *peerConn) send(m *livekit.ServerMessage) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.ws.WriteMessage(websocket.BinaryMessage, b)
}

func (c *peerConn) handle(onAvail func(*livekit.AvailabilityResponse, time.Time), onStatus func(*livekit.UpdateJobStatus, time.Time)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onAvail, c.onStatus = onAvail, onStatus
}

func (c *peerConn) readLoop() {
	for {
		_, b, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		now := time.Now()
		m := &livekit.WorkerMessage{}
		if proto.Unmarshal(b, m) != nil {
			return
		}
		c.mu.Lock()
		onAvail, onStatus := c.onAvail, c.onStatus
		c.mu.Unlock()
		switch x := m.GetMessage().(type) {
		case *livekit.WorkerMessage_Ping:
			_ = c.send(&livekit.ServerMessage{Message: &livekit.ServerMessage_Pong{Pong: &livekit.WorkerPong{LastTimestamp: x.Ping.GetTimestamp()}}})
		case *livekit.WorkerMessage_Availability:
			if onAvail != nil {
				onAvail(x.Availability, now)
			}
		case *livekit.WorkerMessage_UpdateJob:
			if onStatus != nil {
				onStatus(x.UpdateJob, now)
			}
		}
	}
}

func (c *peerConn) offer(j *livekit.Job) error {
	return c.send(&livekit.ServerMessage{Message: &livekit.ServerMessage_Availability{Availability: &livekit.AvailabilityRequest{Job: j}}})
}

func (c *peerConn) assign(j *livekit.Job) error {
	return c.send(&livekit.ServerMessage{Message: &livekit.ServerMessage_Assignment{Assignment: &livekit.JobAssignment{Job: j, Token: "bench-token"}}})
}

// percentiles returns p50 and p99 of d in microseconds.
func percentiles(d []time.Duration) (p50, p99 float64) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) float64 {
		return float64(s[min(len(s)-1, int(q*float64(len(s))))].Nanoseconds()) / 1e3
	}
	return at(0.50), at(0.99)
}

var _ = context.Background
