package livekittest

import (
	"fmt"
	"strings"
	"testing"
)

func TestServerLog(t *testing.T) {
	var fwd strings.Builder
	l := newServerLog("warn", &fwd)
	mark, changed := l.mark()
	lines := []string{
		"2026-11-29T02:52:44.021Z\tINFO\tlivekit.agents\tservice/agentservice.go:303\tworker registered\t" +
			`{"namespace": "", "jobType": "JT_ROOM", "agentName": "a", "workerID": "AW_1"}`,
		"2026-11-29T02:52:49.010Z\tINFO\tlivekit\tagent/client.go:150\tnot dispatching agent job since no worker is available\t" +
			`{"agentName": "a", "jobType": "JT_ROOM", "room": "r1", "roomID": "RM_1"}`,
		"2026-11-29T02:52:49.100Z\tWARN\tlivekit.agents\tservice/agentservice.go:402\tno worker available to handle job\t" +
			`{"jobID": "AJ_1", "agentName": "a", "jobType": "JT_ROOM", "room": "r2", "error": "no workers available"}`,
		"2026-11-29T02:52:50.376Z\tINFO\tlivekit.agents\tservice/agentservice.go:412\tassigned job to worker\t" +
			`{"jobID": "AJ_2", "agentName": "a", "jobType": "JT_ROOM", "room": "r3", "workerID": "AW_1"}`,
		"2026-11-29T02:52:50.508Z\tINFO\tlivekit\tagent/client.go:150\tnot dispatching agent job since no worker is available\t" +
			`{"agentName": "a", "jobType": "JT_PARTICIPANT", "room": "r3", "roomID": "RM_3"}`,
		"2026-11-29T02:52:51.175Z\tINFO\tlivekit\tagent/client.go:181\tfailed to send job request\t" +
			`{"error": "no response from servers", "namespace": "", "jobType": "JT_ROOM", "agentName": "b"}`,
		"2026-11-29T02:52:52.000Z\tERROR\tlivekit\tx.go:1\tsomething broke",
		"goroutine 1 [running]:",
	}
	// Written in pieces that split lines, as a pipe may deliver them.
	all := strings.Join(lines, "\n") + "\n"
	for len(all) > 0 {
		n := min(37, len(all))
		_, _ = l.Write([]byte(all[:n]))
		all = all[n:]
	}

	select {
	case <-changed:
	default:
		t.Fatal("no change signalled")
	}
	events, _ := l.since(mark)
	want := []logEvent{
		{seq: 1, kind: evRegistered, agent: "a", reason: "worker registered"},
		{seq: 2, kind: evNotSent, agent: "a", room: "r1", reason: "not dispatching agent job since no worker is available"},
		{seq: 3, kind: evNotSent, agent: "a", room: "r2", reason: "no worker available to handle job: no workers available"},
		{seq: 4, kind: evAssigned, agent: "a", room: "r3", reason: "assigned job to worker"},
		{seq: 5, kind: evRequestFailed, agent: "b", reason: "failed to send job request: no response from servers"},
	}
	if fmt.Sprint(events) != fmt.Sprint(want) {
		t.Fatalf("events:\n%v\nwant\n%v", events, want)
	}
	if later, _ := l.since(3); len(later) != 2 || later[0].seq != 4 {
		t.Fatalf("since(3) = %v", later)
	}
	if _, ok, _ := l.registeredAt("a"); !ok {
		t.Fatal("registration of a not recorded")
	}
	if _, ok, _ := l.registeredAt("b"); ok {
		t.Fatal("registration of b recorded")
	}

	wantOut := strings.Join([]string{lines[2], lines[6], lines[7]}, "\n") + "\n"
	if fwd.String() != wantOut || l.String() != wantOut {
		t.Fatalf("forwarded:\n%s\nkept:\n%s\nwant the WARN, ERROR and unparsed lines:\n%s", fwd.String(), l.String(), wantOut)
	}
}
