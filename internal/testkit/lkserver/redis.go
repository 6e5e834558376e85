package lkserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrRedisNotInstalled is returned by [StartRedis] when no redis-server
// executable is found in PATH.
var ErrRedisNotInstalled = errors.New("redis-server not found in PATH (install the redis-server package, e.g. apt-get install redis-server)")

// Redis is a throwaway redis-server process listening on a free loopback
// port, without persistence.
type Redis struct {
	addr string
	tail *logTail

	stopOnce sync.Once
	proc     *process
}

// StartRedis starts redis-server on a free loopback port with persistence
// disabled and waits until it answers PING. ctx bounds the startup only;
// stop the server with [Redis.Stop]. It returns an error wrapping
// [ErrRedisNotInstalled] if redis-server is not installed.
func StartRedis(ctx context.Context) (*Redis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRedisNotInstalled, err)
	}
	for attempt := 1; ; attempt++ {
		r, err := startRedis(ctx, bin)
		var busy *portInUseError
		if err == nil || attempt >= portRetries || !errors.As(err, &busy) {
			return r, err
		}
	}
}

// startRedis makes one attempt at starting redis-server on a fresh port.
func startRedis(ctx context.Context, bin string) (*Redis, error) {
	ports, err := freePorts("tcp", 1)
	if err != nil {
		return nil, err
	}
	r := &Redis{
		addr: net.JoinHostPort(Host, strconv.Itoa(ports[0])),
		tail: newLogTail(nil),
	}
	args := []string{
		"--port", strconv.Itoa(ports[0]),
		"--bind", Host,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		// Persistence is off so nothing should be written, but keep the
		// working directory away from the caller's regardless.
		"--dir", os.TempDir(),
	}
	r.proc, err = startProcess(bin, args, os.Environ(), r.tail)
	if err != nil {
		return nil, err
	}
	if err := waitRedis(ctx, r.addr, r.proc); err != nil {
		r.proc.terminate(0, time.Second)
		err = fmt.Errorf("redis-server on %s did not become ready: %w", r.addr, err)
		if strings.Contains(r.tail.String(), "Address already in use") {
			err = fmt.Errorf("%w: %w", &portInUseError{Port: ports[0]}, err)
		}
		return nil, withLog(err, "redis-server", r.tail)
	}
	return r, nil
}

// waitRedis polls addr with PING until it answers PONG, the process exits,
// ctx is done, or startTimeout passes.
func waitRedis(ctx context.Context, addr string, proc *process) error {
	ctx, cancel := context.WithTimeoutCause(ctx, startTimeout, fmt.Errorf("no PONG from %s within %s", addr, startTimeout))
	defer cancel()
	ctx, abort := proc.context(ctx)
	defer abort()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = ping(ctx, addr); last == nil {
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

// ping sends one PING using the inline protocol and expects +PONG.
func ping(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("unexpected PING reply %q", line)
	}
	return nil
}

// Addr returns the host:port Redis listens on, for [Options.RedisAddr].
func (r *Redis) Addr() string { return r.addr }

// Stop stops Redis (SIGTERM, then SIGKILL after a few seconds) and waits
// for it to exit. It is idempotent. It returns an error only if Redis had
// crashed before, including the end of its output.
func (r *Redis) Stop() error {
	var err error
	r.stopOnce.Do(func() {
		if e := r.proc.unexpectedExit(); e != nil {
			err = withLog(fmt.Errorf("redis-server: %w", e), "redis-server", r.tail)
		}
		r.proc.terminate(0, stopKill)
	})
	return err
}
