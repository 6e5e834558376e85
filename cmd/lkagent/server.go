package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
)

func runServer(ctx context.Context, e *env, args []string) error {
	const name = "server"
	f := newFlags(name, "[--port N] [--api-key K --api-secret S] [--logs]",
		"Runs a LiveKit server "+lkserver.Version+" for development in the foreground, on loopback only, until\n"+
			"Ctrl-C. The first run builds the server with 'go install' (a few minutes); later runs reuse it.\n"+
			"It prints the URL and the API key and secret to use, as export lines for another shell.\n"+
			"The keys are generated unless given; they are not read from LIVEKIT_API_KEY/LIVEKIT_API_SECRET.")
	port := f.fs.Int("port", 7880, "HTTP and WebSocket port on 127.0.0.1; 0 picks a free one")
	tcpPort := f.fs.Int("rtc-tcp-port", 0, "WebRTC ICE/TCP port; 0 picks a free one")
	udpPort := f.fs.Int("rtc-udp-port", 0, "WebRTC ICE/UDP port; 0 picks a free one")
	apiKey := f.fs.String("api-key", "", "API key the server accepts; generated when empty")
	apiSecret := f.fs.String("api-secret", "", "API secret of that key; generated when empty")
	logs := f.fs.Bool("logs", false, "copy the server's own log to stderr")
	f.env("port", "LKAGENT_SERVER_PORT")
	if err := f.parse(e, args); err != nil {
		return err
	}
	for _, p := range []struct {
		flag string
		v    int
	}{{"port", *port}, {"rtc-tcp-port", *tcpPort}, {"rtc-udp-port", *udpPort}} {
		if p.v < 0 || p.v > 65535 {
			return usagef(name, "--%s %d is not a port (0-65535)", p.flag, p.v)
		}
	}
	if (*apiKey == "") != (*apiSecret == "") {
		return usagef(name, "give both --api-key and --api-secret, or neither (then both are generated)")
	}
	if *port != 0 {
		// Say plainly that the port is taken rather than wait for the
		// server to fail on it.
		ln, err := net.Listen("tcp", net.JoinHostPort(lkserver.Host, strconv.Itoa(*port)))
		if err != nil {
			return fmt.Errorf("port %d on %s is in use (is a LiveKit server already running?): stop what listens there, or pick another port with --port (0 = any free port)", *port, lkserver.Host)
		}
		_ = ln.Close()
	}

	srv, err := startServer(ctx, e.stderr, lkserver.Options{
		APIKey: *apiKey, APISecret: *apiSecret,
		Port: *port, RTCTCPPort: *tcpPort, RTCUDPPort: *udpPort,
		Logs: logWriter(*logs, e.stderr),
	})
	if err != nil {
		return err
	}
	defer srv.Stop()

	w := e.stdout
	for _, n := range f.envNotes() {
		fmt.Fprintln(w, n)
	}
	fmt.Fprintf(w, "LiveKit server %s is running (pid %d). Ctrl-C stops it.\n\n", lkserver.Version, srv.PID())
	tw := newTable(w)
	fmt.Fprintf(tw, "  URL\t%s\n", srv.URL())
	fmt.Fprintf(tw, "  API key\t%s\n", srv.APIKey())
	fmt.Fprintf(tw, "  API secret\t%s\n", srv.APISecret())
	_ = tw.Flush()
	fmt.Fprintf(w, "\nIn another shell:\n\n")
	fmt.Fprintf(w, "  export LIVEKIT_URL=%s\n", shellQuote(srv.URL()))
	fmt.Fprintf(w, "  export LIVEKIT_API_KEY=%s\n", shellQuote(srv.APIKey()))
	fmt.Fprintf(w, "  export LIVEKIT_API_SECRET=%s\n", shellQuote(srv.APISecret()))
	fmt.Fprintf(w, "  lkagent worker --agent-name echo --deployment staging\n")
	fmt.Fprintf(w, "  lkagent dispatch create --room test --agent-name echo --deployment staging\n\n")

	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(w, "stopping the LiveKit server")
			if err := srv.Stop(); err != nil {
				return fmt.Errorf("the LiveKit server failed while stopping: %v", err)
			}
			fmt.Fprintln(w, "stopped")
			return nil
		case <-tick.C:
			if srv.PID() == 0 {
				err := srv.Stop()
				return fmt.Errorf("the LiveKit server exited on its own (%v); run again with --logs to see its log", err)
			}
		}
	}
}

// startServer finds (or builds, reporting progress to progress) the server
// binary and starts a server. Errors are one-line explanations.
func startServer(ctx context.Context, progress io.Writer, o lkserver.Options) (*lkserver.Server, error) {
	bin, err := lkserver.Binary(ctx, &prefixWriter{w: progress, prefix: "  | "})
	if err != nil {
		if ctx.Err() != nil {
			return nil, interrupted(ctx)
		}
		return nil, fmt.Errorf("cannot get the LiveKit server %s binary: %v (set %s to use a binary of your own)",
			lkserver.Version, err, lkserver.EnvServerBinary)
	}
	o.Binary = bin
	srv, err := lkserver.Start(ctx, o)
	if err != nil {
		if ctx.Err() != nil {
			return nil, interrupted(ctx)
		}
		msg := oneLine(err.Error())
		if strings.Contains(err.Error(), "address already in use") {
			msg = "a port it needs is in use: " + msg
		}
		return nil, fmt.Errorf("cannot start the LiveKit server: %s", msg)
	}
	return srv, nil
}

// logWriter returns w when on, else nil (logs discarded).
func logWriter(on bool, w io.Writer) io.Writer {
	if on {
		return w
	}
	return nil
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '-' || r == '_' || r == '.' || r == ':' || r == '/' || r == '=' || r == '+' || r == ',' || r == '@' ||
			('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9'))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
