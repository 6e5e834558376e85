package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// tmux is a detached tmux session running a command in a real terminal,
// killed when the test ends.
type tmux struct {
	t    *testing.T
	name string
}

// startTmux runs the shell command line in a new detached tmux session of
// 200x50 cells, with env as its environment. The test is skipped under
// -short and when tmux is missing.
func startTmux(t *testing.T, env []string, dir, line string) *tmux {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the real server in a terminal")
	}
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed")
	}
	s := &tmux{t: t, name: uniq("lkagent-test")}
	// A server of the test's own (-L) so that nothing of a user's tmux is
	// touched; the command's environment is set with env(1), since a
	// session inherits the tmux server's.
	args := []string{"-L", s.name, "new-session", "-d", "-s", s.name, "-x", "200", "-y", "50"}
	if dir != "" {
		args = append(args, "-c", dir)
	}
	args = append(args, "env", "-i")
	args = append(args, env...)
	args = append(args, "sh", "-c", line+"; echo '[exited '$?']'; sleep 600")
	// The pane stays when its command ends (a Ctrl-C ends the shell too),
	// so that its screen can still be read.
	args = append(args, ";", "set-option", "-t", s.name, "remain-on-exit", "on")
	if out, err := exec.Command("tmux", args...).CombinedOutput(); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("screen of %q:\n%s", line, s.screen())
		}
		_ = exec.Command("tmux", "-L", s.name, "kill-server").Run()
	})
	return s
}

// screen returns the session's screen and scrollback.
func (s *tmux) screen() string {
	out, err := exec.Command("tmux", "-L", s.name, "capture-pane", "-p", "-J", "-S", "-2000", "-t", s.name).Output()
	if err != nil {
		return "(capture-pane: " + err.Error() + ")"
	}
	return string(out)
}

// send types keys (tmux send-keys: "Enter" and "C-c" are keys, "-l" text).
func (s *tmux) send(keys ...string) {
	s.t.Helper()
	if out, err := exec.Command("tmux", append([]string{"-L", s.name, "send-keys", "-t", s.name}, keys...)...).CombinedOutput(); err != nil {
		s.t.Fatalf("tmux send-keys: %v\n%s", err, out)
	}
}

// typeLine types text and Enter.
func (s *tmux) typeLine(text string) {
	s.t.Helper()
	s.send("-l", text)
	s.send("Enter")
}

// waitFor waits until the screen holds want (after the screen's first
// occurrence of after, when after is not ""), polling, for at most d.
func (s *tmux) waitFor(d time.Duration, after, want string) string {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		scr := s.screen()
		rest := scr
		if after != "" {
			_, rest, _ = strings.Cut(scr, after)
		}
		if strings.Contains(rest, want) {
			return scr
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %q on the screen within %s", want, d)
		}
		time.Sleep(100 * time.Millisecond) // polling a terminal: there is no event to wait on
	}
}

// lkagent console against the real server and the echo agent, in a real
// terminal: the console dispatches the agent to its deployment (read from
// LIVEKIT_AGENT_DEPLOYMENT, and said so), shows it join, sends what is
// typed as lk.chat text streams and shows the replies, and on Ctrl-D
// deletes the dispatch, and the agent leaves.
func TestConsoleInATerminal(t *testing.T) {
	t.Parallel()
	agent, room := uniq("agent"), uniq("room")
	start(t, srvEnv(), "worker", "--agent-name", agent, "--deployment", "staging", "--http-addr", "")
	s := startTmux(t, srvEnv("LIVEKIT_AGENT_DEPLOYMENT=staging"), "", lkagentBin+" console --agent-name "+agent+" --room "+room)
	s.waitFor(30*time.Second, "", "deployment: staging (from LIVEKIT_AGENT_DEPLOYMENT)")
	s.waitFor(30*time.Second, "", "type a message")
	// Typed at once: the console holds it until the agent is in the room.
	s.typeLine("hello")
	s.waitFor(60*time.Second, "", ": echo[staging]: hello")
	s.waitFor(30*time.Second, "", "* agent echo-")
	s.typeLine("second line")
	s.waitFor(30*time.Second, "", ": echo[staging]: second line")
	s.send("C-d")
	s.waitFor(30*time.Second, "", "deleted dispatch AD_")
	t.Logf("screen:\n%s", s.waitFor(30*time.Second, "", "[exited 0]"))
}

// waitUntil polls cond until it holds or d passed, and says which.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}
