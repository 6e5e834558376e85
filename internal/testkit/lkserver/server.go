package lkserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Host is the loopback address every server and Redis listens on.
const Host = "127.0.0.1"

const (
	// startTimeout bounds how long Start waits for the server to answer.
	startTimeout = 30 * time.Second
	// portRetries is how many times Start re-picks ports it chose itself
	// when another process grabbed one of them first.
	portRetries = 3
	// Stop sends a second SIGTERM (livekit-server's "force" shutdown, which
	// skips waiting for participants to leave) after stopRepeat, and
	// SIGKILL after stopKill.
	stopRepeat = 500 * time.Millisecond
	stopKill   = 5 * time.Second
	// runningDelay is how long Start waits after the first healthy answer;
	// see Server.start.
	runningDelay = 150 * time.Millisecond
)

// Options configures a server started with [Start]. The zero value is a
// single-node server with random keys on free ports.
type Options struct {
	// APIKey and APISecret are the only key pair the server accepts.
	// Empty values are replaced by a random key ("lk" + hex) and a random
	// 64-character secret.
	APIKey, APISecret string
	// Port is the HTTP/WebSocket port; 0 picks a free port.
	Port int
	// RTCTCPPort and RTCUDPPort are the WebRTC ICE/TCP and ICE/UDP ports;
	// 0 picks free ports. The server binds the ICE/TCP port on all
	// interfaces (it has no setting to restrict it); everything else is
	// bound to 127.0.0.1 only.
	RTCTCPPort, RTCUDPPort int
	// RedisAddr is the host:port of a Redis shared by the nodes of a
	// multi-node deployment; "" runs a single node without Redis.
	RedisAddr string
	// Logs receives the server's stdout and stderr; nil discards them. The
	// last lines are kept in memory either way and included in start errors.
	Logs io.Writer
	// Binary is the livekit-server executable; "" uses [Binary].
	Binary string
	// LogLevel is the server's log level: "debug", "info" (the default),
	// "warn" or "error". At "debug" the server logs what it does with
	// every job status it receives ("received job update for unknown job").
	LogLevel string
	// WebhookURLs, if set, are the URLs the server posts its webhooks to
	// (room and participant events), signed with APIKey's secret.
	WebhookURLs []string
	// AgentsTargetLoad is the server's agents.target_load: a node takes a
	// job only while its available workers' loads sum below it; 0 keeps
	// the server's default (0.7).
	AgentsTargetLoad float64
}

// Server is a running (or stopped) livekit-server process. Its ports and
// keys are fixed at [Start] and kept across [Server.Restart]. Methods are
// safe for concurrent use.
type Server struct {
	opts Options // fully resolved: binary, keys and ports are all set

	ops sync.Mutex // serializes Stop, Kill and Restart

	mu   sync.Mutex
	proc *process // most recent run, possibly exited; nil before the first
	tail *logTail // output of the most recent run
}

// Start starts a livekit-server and waits until its HTTP endpoint reports
// healthy (GET / returns 200 "OK"), for at most about 30 seconds. ctx bounds
// the startup only; stop the server with [Server.Stop]. On failure the
// returned error includes the last lines of the server's output.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Binary == "" {
		bin, err := Binary(ctx, nil)
		if err != nil {
			return nil, fmt.Errorf("locate livekit-server: %w", err)
		}
		o.Binary = bin
	}
	var err error
	if o.APIKey == "" {
		if o.APIKey, err = randomHex("lk", 6); err != nil {
			return nil, err
		}
	}
	if o.APISecret == "" {
		if o.APISecret, err = randomHex("", 32); err != nil {
			return nil, err
		}
	}

	auto := o // the caller's choices; zero ports are re-picked on collision
	for attempt := 1; ; attempt++ {
		if err := pickPorts(&o, auto); err != nil {
			return nil, err
		}
		s := &Server{opts: o}
		err := s.start(ctx)
		if err == nil {
			return s, nil
		}
		// Retry only when another process took a port we picked ourselves
		// between probing it and the server binding it.
		var busy *portInUseError
		if attempt >= portRetries || !errors.As(err, &busy) || !busy.in(auto.Port, auto.RTCTCPPort, auto.RTCUDPPort) {
			return nil, err
		}
	}
}

// pickPorts sets the ports of o that are zero in want to fresh free ports.
func pickPorts(o *Options, want Options) error {
	o.Port, o.RTCTCPPort, o.RTCUDPPort = want.Port, want.RTCTCPPort, want.RTCUDPPort
	var tcp []int
	if o.Port == 0 || o.RTCTCPPort == 0 {
		var err error
		if tcp, err = freePorts("tcp", 2); err != nil {
			return err
		}
	}
	if o.Port == 0 {
		o.Port = tcp[0]
	}
	if o.RTCTCPPort == 0 {
		o.RTCTCPPort = tcp[1]
	}
	if o.RTCUDPPort == 0 {
		udp, err := freePorts("udp", 1)
		if err != nil {
			return err
		}
		o.RTCUDPPort = udp[0]
	}
	return nil
}

// portInUseError reports that a server could not bind Port because it was
// in use.
type portInUseError struct{ Port int }

func (e *portInUseError) Error() string { return fmt.Sprintf("port %d already in use", e.Port) }

// in reports whether the busy port was picked by this package, given the
// caller's port choices want (0 = pick): the caller left at least one port
// to us and did not choose the busy port itself.
func (e *portInUseError) in(want ...int) bool {
	return slices.Contains(want, 0) && e.Port != 0 && !slices.Contains(want, e.Port)
}

// bindErrorRE matches the error livekit-server prints when a port is busy,
// e.g. "listen tcp 127.0.0.1:7880: bind: address already in use".
var bindErrorRE = regexp.MustCompile(`listen (?:tcp|udp)\S* \S*:(\d+): bind: address already in use`)

// busyPort returns a *portInUseError if log shows a failed bind.
func busyPort(log string) error {
	m := bindErrorRE.FindStringSubmatch(log)
	if m == nil {
		return nil
	}
	port, _ := strconv.Atoi(m[1])
	return &portInUseError{Port: port}
}

// start launches the process and waits for it to become healthy.
func (s *Server) start(ctx context.Context) error {
	tail := newLogTail(s.opts.Logs)
	proc, err := startProcess(s.opts.Binary, s.args(), s.env(), tail)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.proc, s.tail = proc, tail
	s.mu.Unlock()

	if err := waitHealthy(ctx, s.HTTPURL(), proc); err != nil {
		proc.terminate(0, time.Second)
		err = fmt.Errorf("livekit-server on port %d did not become ready: %w", s.opts.Port, err)
		if busy := busyPort(tail.String()); busy != nil {
			err = fmt.Errorf("%w: %w", busy, err)
		}
		return withLog(err, "livekit-server", tail)
	}
	// livekit-server answers HTTP about 100ms before it marks itself
	// running, and silently ignores a SIGTERM that arrives in between (the
	// process then only exits on a second signal). Let that window pass so
	// that a Stop right after Start is graceful and quick.
	select {
	case <-time.After(runningDelay):
	case <-ctx.Done():
	}
	return nil
}

// args returns the command line for the configured server.
func (s *Server) args() []string {
	return []string{"--bind", Host, "--config-body", s.configYAML()}
}

// configYAML returns the server configuration.
//
// The RTC part makes WebRTC work on loopback: node_ip pins the advertised
// candidate address to 127.0.0.1 (otherwise the server advertises the first
// non-loopback interface address and, since node_ip is then auto-detected,
// adds public STUN servers); enable_loopback_candidate together with the
// 127.0.0.1/32 IP filter makes the UDP mux bind and gather only on loopback.
// Without --dev the server would default to the ICE port range 50000-60000;
// a single udp_port is what --dev uses too (7882), here on a free port.
func (s *Server) configYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "port: %d\n", s.opts.Port)
	fmt.Fprintf(&b, "rtc:\n")
	fmt.Fprintf(&b, "  tcp_port: %d\n", s.opts.RTCTCPPort)
	fmt.Fprintf(&b, "  udp_port: %d\n", s.opts.RTCUDPPort)
	fmt.Fprintf(&b, "  use_external_ip: false\n")
	fmt.Fprintf(&b, "  node_ip: %s\n", Host)
	fmt.Fprintf(&b, "  enable_loopback_candidate: true\n")
	fmt.Fprintf(&b, "  ips:\n    includes: [%s/32]\n", Host)
	if s.opts.RedisAddr != "" {
		fmt.Fprintf(&b, "redis:\n  address: %s\n", yamlString(s.opts.RedisAddr))
	}
	level := s.opts.LogLevel
	if level == "" {
		level = "info"
	}
	fmt.Fprintf(&b, "logging:\n  level: %s\n", yamlString(level))
	if len(s.opts.WebhookURLs) > 0 {
		fmt.Fprintf(&b, "webhook:\n  api_key: %s\n  urls:\n", yamlString(s.opts.APIKey))
		for _, u := range s.opts.WebhookURLs {
			fmt.Fprintf(&b, "    - %s\n", yamlString(u))
		}
	}
	if s.opts.AgentsTargetLoad > 0 {
		fmt.Fprintf(&b, "agents:\n  target_load: %g\n", s.opts.AgentsTargetLoad)
	}
	return b.String()
}

// env returns the child's environment: the caller's, minus every variable
// livekit-server reads configuration from, plus the API keys (passed here
// rather than on the command line to keep the secret out of process lists).
func (s *Server) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "LIVEKIT_"),
			name == "NODE_IP", name == "UDP_PORT", name == "REDIS_HOST", name == "REDIS_PASSWORD":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LIVEKIT_KEYS="+yamlString(s.opts.APIKey)+": "+yamlString(s.opts.APISecret))
}

// yamlString quotes s as a YAML double-quoted scalar.
func yamlString(s string) string {
	b, _ := json.Marshal(s) // a JSON string is a valid YAML double-quoted scalar
	return string(b)
}

// waitHealthy polls url until it answers 200 "OK", the process exits, ctx is
// done, or startTimeout passes.
func waitHealthy(ctx context.Context, url string, proc *process) error {
	ctx, cancel := context.WithTimeoutCause(ctx, startTimeout, fmt.Errorf("no healthy answer from %s within %s", url, startTimeout))
	defer cancel()
	ctx, abort := proc.context(ctx)
	defer abort()
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		last := checkHealth(ctx, client, url)
		if last == nil {
			return nil
		}
		select {
		case <-proc.done:
			return fmt.Errorf("process exited: %v", proc.err)
		case <-ctx.Done():
			if proc.exited() {
				return fmt.Errorf("process exited: %v", proc.err)
			}
			return fmt.Errorf("%w (last check: %v)", context.Cause(ctx), last)
		case <-tick.C:
		}
	}
}

// checkHealth performs one health check.
func checkHealth(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "OK" {
		return fmt.Errorf("GET /: %s: %q", resp.Status, body)
	}
	return nil
}

// URL returns the WebSocket URL clients connect to, ws://127.0.0.1:PORT.
func (s *Server) URL() string { return "ws://" + s.hostPort() }

// HTTPURL returns the base URL of the HTTP API, http://127.0.0.1:PORT.
func (s *Server) HTTPURL() string { return "http://" + s.hostPort() }

func (s *Server) hostPort() string { return net.JoinHostPort(Host, strconv.Itoa(s.opts.Port)) }

// APIKey returns the API key the server accepts.
func (s *Server) APIKey() string { return s.opts.APIKey }

// APISecret returns the secret of [Server.APIKey].
func (s *Server) APISecret() string { return s.opts.APISecret }

// Options returns the resolved options: binary, keys and ports are set.
func (s *Server) Options() Options { return s.opts }

// PID returns the process id of the running server, or 0 if it is not
// running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.proc.exited() {
		return 0
	}
	return s.proc.pid()
}

// RecentLogs returns the last lines (about 200) the current or most recent
// server process wrote.
func (s *Server) RecentLogs() string {
	tail := s.tailOf()
	if tail == nil {
		return ""
	}
	return tail.String()
}

// current returns the current process, which may have exited, or nil.
func (s *Server) current() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

// Stop stops the server gracefully with SIGTERM, forces the shutdown with a
// second SIGTERM if participants are still connected after a second, and
// sends SIGKILL if the process is still alive after a few seconds. It waits
// for the process to exit. Stopping a stopped server is a no-op.
//
// Stop returns an error only if the server had crashed, that is exited with
// a failure status without being stopped or killed through this package;
// the error includes the end of its output.
func (s *Server) Stop() error {
	s.ops.Lock()
	defer s.ops.Unlock()
	p := s.current()
	if p == nil {
		return nil
	}
	if err := p.unexpectedExit(); err != nil {
		return withLog(fmt.Errorf("livekit-server: %w", err), "livekit-server", s.tailOf())
	}
	p.terminate(stopRepeat, stopKill)
	return nil
}

// tailOf returns the log tail of the most recent run.
func (s *Server) tailOf() *logTail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tail
}

// Kill kills the server with SIGKILL at once, simulating a crash, and waits
// for the process to exit. Killing a stopped server is a no-op.
func (s *Server) Kill() error {
	s.ops.Lock()
	defer s.ops.Unlock()
	if p := s.current(); p != nil && !p.exited() {
		p.kill()
	}
	return nil
}

// Restart stops the server if it is running and starts it again with the
// same ports and keys, waiting until it is healthy as [Start] does.
func (s *Server) Restart(ctx context.Context) error {
	s.ops.Lock()
	defer s.ops.Unlock()
	if p := s.current(); p != nil {
		p.terminate(stopRepeat, stopKill)
	}
	return s.start(ctx)
}

// randomHex returns prefix followed by n random bytes in hex.
func randomHex(prefix string, n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate random key: %w", err)
	}
	return prefix + hex.EncodeToString(b), nil
}
