package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// 'lkagent server' prints the connection settings as export lines that
// work, and stops its server on Ctrl-C.
func TestServerCommand(t *testing.T) {
	t.Parallel()
	s := start(t, cleanEnv(), "server", "--port", "0")
	s.waitFor(s.stdout, 60*time.Second, "export LIVEKIT_API_SECRET=")
	out := s.stdout.String()
	pid := serverPID(t, out)

	exports := regexp.MustCompile(`(?m)^\s*export (LIVEKIT_[A-Z_]+)=(\S+)$`).FindAllStringSubmatch(out, -1)
	if len(exports) != 3 {
		t.Fatalf("want 3 export lines:\n%s", out)
	}
	var env []string
	for _, e := range exports {
		env = append(env, e[1]+"="+e[2])
	}
	if !strings.HasPrefix(exports[0][2], "ws://127.0.0.1:") {
		t.Fatalf("URL = %q", exports[0][2])
	}
	// The printed settings work.
	room := uniq("room")
	cli(t, cleanEnv(env...), "dispatch", "create", "--room", room, "--agent-name", "a", "--deployment", "canary").mustOK(t)
	list := cli(t, cleanEnv(env...), "dispatch", "list", "--room", room).mustOK(t).stdout
	if !strings.Contains(list, "canary") {
		t.Fatalf("list:\n%s", list)
	}

	s.signal(os.Interrupt)
	if code := s.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after Ctrl-C, want 0", code)
	}
	if !strings.Contains(s.stdout.String(), "stopped") {
		t.Fatalf("no 'stopped' line:\n%s", s.stdout.String())
	}
	assertGone(t, pid)
}

func TestServerPortInUse(t *testing.T) {
	t.Parallel()
	addr := srv.URL()[len("ws://"):]
	port := addr[strings.LastIndex(addr, ":")+1:]
	cli(t, cleanEnv(), "server", "--port", port).mustFail(t, exitFailure, "port "+port, "in use", "--port")
}
