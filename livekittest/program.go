package livekittest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lkagent/lkagent/internal/testkit/racebuild"
	"github.com/lkagent/lkagent/internal/testkit/syncbuf"
)

// Build builds the main package pkg (as go build names it: "." is the
// test's own package) into a directory removed when the test ends, and
// returns the program's path. Under the race detector the program is built
// with it too, so that a test run with -race checks the program as well.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	if pkg == "." {
		bin = filepath.Join(filepath.Dir(bin), "program")
	}
	args := []string{"build", "-o", bin}
	if racebuild.Enabled {
		args = append(args, "-race")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", append(args, pkg)...).CombinedOutput(); err != nil {
		t.Fatalf("livekittest: go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// Program is a program under test started by [Server.StartProgram]: an
// agent's own binary, to test what its main function does (flags, signals,
// exit codes) against the server.
type Program struct {
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
	err  error // set before done is closed
}

// StartProgram starts the program bin with args, connected to the server:
// its environment is the test's without any LIVEKIT_ variable, plus
// LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET of s, plus env
// ("NAME=value", which may set LIVEKIT_AGENT_DEPLOYMENT, for example). The
// program is killed when the test ends if it still runs, and its output is
// logged if the test failed.
func (s *Server) StartProgram(t testing.TB, bin string, env []string, args ...string) *Program {
	t.Helper()
	p := &Program{cmd: exec.Command(bin, args...), out: &syncbuf.Buffer{}, done: make(chan struct{})}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LIVEKIT_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, "LIVEKIT_URL="+s.URL, "LIVEKIT_API_KEY="+s.APIKey, "LIVEKIT_API_SECRET="+s.APISecret)
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("livekittest: start %s: %v", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if p.Running() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", bin, p.Output())
		}
	})
	return p
}

// Signal sends sig to the program.
func (p *Program) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("livekittest: signal %v: %v", sig, err)
	}
}

// Running reports whether the program still runs.
func (p *Program) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Wait waits until the program exits, and returns its exit code; -1 if a
// signal killed it. It fails the test if the program still runs after
// [Timeout].
func (p *Program) Wait(t testing.TB) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(Timeout):
		t.Fatalf("livekittest: %s still runs after %s", p.cmd.Path, Timeout)
	}
	var ee *exec.ExitError
	switch {
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	case p.err != nil:
		t.Fatalf("livekittest: %s: %v", p.cmd.Path, p.err)
	}
	return 0
}

// Output is what the program wrote so far, to its standard output and
// standard error.
func (p *Program) Output() string { return p.out.String() }

// FreeAddr returns a loopback address whose port was free a moment ago,
// for a program's HTTP endpoints (its --http-addr, say).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("livekittest: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// WaitDraining waits until the program, an lkagent worker serving its
// HTTP endpoints at addr (host:port), drains: its /readyz answers 503
// "draining". It fails the test if that does not happen within [Timeout].
// A test that stops a program with a signal calls it to know the signal
// was taken as a drain before it ends the program's jobs.
func (p *Program) WaitDraining(t testing.TB, addr string) {
	t.Helper()
	Eventually(t, 0, "/readyz of "+addr+" answering that the worker drains", func() bool {
		code, body := get(t.Context(), "http://"+addr+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "draining")
	})
}

// get returns the status code and body of a GET of url; 0 if it failed.
func get(ctx context.Context, url string) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, ""
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(body)
}

// Metric returns the sum of the series of the counter or gauge name, among
// those carrying every label of labels, that the lkagent worker serving
// its HTTP endpoints at addr (host:port) exports on /metrics; 0 if there is
// none. It fails the test if /metrics cannot be read.
//
//	declined := livekittest.Metric(t, addr, "lkagent_offers_declined_total", map[string]string{"reason": "rejected_by_handler"})
func Metric(t testing.TB, addr, name string, labels map[string]string) float64 {
	t.Helper()
	code, body := get(t.Context(), "http://"+addr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("livekittest: GET http://%s/metrics: status %d", addr, code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("livekittest: /metrics of %s: %v", addr, err)
	}
	var sum float64
	for _, m := range families[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		matches := true
		for k, v := range labels {
			matches = matches && have[k] == v
		}
		if matches {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
