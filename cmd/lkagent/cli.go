package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/worker"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1   // the command ran and failed
	exitUsage       = 2   // bad command line: nothing was done
	exitInterrupted = 130 // stopped by a signal before it was done
)

// env is what a command sees of the process: its output streams and its
// environment.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

// command is one subcommand.
type command struct {
	name    string // as typed: "dispatch create"
	summary string // one line for "lkagent help"
	// run parses args (the arguments after the command name) and runs.
	run func(ctx context.Context, e *env, args []string) error
}

// commands lists every subcommand, in the order help shows them.
func commands() []*command {
	return []*command{
		{name: "demo", summary: "run staging and production workers against a local LiveKit server and show how dispatches are routed", run: runDemo},
		{name: "dispatch create", summary: "create an agent dispatch for a deployment", run: runDispatchCreate},
		{name: "dispatch list", summary: "list the agent dispatches of a room", run: runDispatchList},
		{name: "dispatch delete", summary: "delete an agent dispatch", run: runDispatchDelete},
		{name: "token", summary: "print a join token that dispatches an agent deployment, or decode one", run: runToken},
		{name: "server", summary: "run a local LiveKit server for development in the foreground", run: runServer},
		{name: "bench", summary: "measure latency, throughput, memory per job and routing against a LiveKit server", run: runBench},
		{name: "dev", summary: "build and run an agent package against a local server, and reload it on every source change", run: runDev},
		{name: "console", summary: "dispatch an agent into a room and chat with it from the terminal", run: runConsole},
		{name: "worker", summary: "run the example echo agent as a worker of an agent name and deployment", run: runWorker},
		{name: "guard", summary: "restart agents that failed in rooms still in use (webhooks) and serve dispatches no worker took", run: runGuard},
	}
}

// run runs the command line args (without the program name) and returns the
// exit code. ctx ends when the user interrupts; commands then stop cleanly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	e := &env{stdout: stdout, stderr: stderr, getenv: getenv}

	if len(args) == 0 {
		printHelp(stderr)
		return exitUsage
	}
	if isHelpArg(args[0]) {
		if len(args) == 2 && args[1] == "dispatch" {
			printGroupHelp(stdout, "dispatch")
			return exitOK
		}
		if len(args) > 1 {
			if c, _ := findCommand(args[1:]); c != nil {
				return finish(e, c.name, c.run(ctx, e, []string{"--help"}))
			}
		}
		printHelp(stdout)
		return exitOK
	}
	c, rest := findCommand(args)
	if c == nil {
		if args[0] == "dispatch" {
			switch {
			case len(args) > 1 && isHelpArg(args[1]):
				printGroupHelp(stdout, "dispatch")
				return exitOK
			case len(args) > 1:
				fmt.Fprintf(stderr, "lkagent: unknown subcommand \"dispatch %s\": use create, list or delete; run 'lkagent dispatch --help'\n", args[1])
			default:
				fmt.Fprintf(stderr, "lkagent: dispatch needs a subcommand: create, list or delete; run 'lkagent dispatch --help'\n")
			}
			return exitUsage
		}
		fmt.Fprintf(stderr, "lkagent: unknown command %q; run 'lkagent help' for the list of commands\n", args[0])
		return exitUsage
	}
	return finish(e, c.name, c.run(ctx, e, rest))
}

func isHelpArg(s string) bool {
	switch s {
	case "help", "-h", "-help", "--help":
		return true
	}
	return false
}

// printGroupHelp lists the subcommands of group.
func printGroupHelp(w io.Writer, group string) {
	fmt.Fprintf(w, "Usage: lkagent %s <subcommand> [flags]\n\nSubcommands:\n", group)
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	for _, c := range commands() {
		if sub, ok := strings.CutPrefix(c.name, group+" "); ok {
			fmt.Fprintf(tw, "  %s\t%s\n", sub, c.summary)
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nRun 'lkagent %s <subcommand> --help' for its flags.\n", group)
}

// findCommand returns the command args start with, and the arguments after
// its name.
func findCommand(args []string) (*command, []string) {
	for _, c := range commands() {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			return c, args[len(words):]
		}
	}
	return nil, nil
}

// finish prints err as one line and maps it to an exit code.
func finish(e *env, name string, err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, worker.ErrJobProcessDone):
		// A job process of "lkagent worker --processes" served its job
		// (or logged why it could not): nothing to print.
		return worker.ExitCode(err)
	}
	fmt.Fprintf(e.stderr, "lkagent: %s: %s\n", name, oneLine(err.Error()))
	var ue *usageError
	var se *signalError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &se):
		return exitInterrupted
	}
	return exitFailure
}

// oneLine keeps the first line of s: errors are reported on one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	return s
}

func printHelp(w io.Writer) {
	fmt.Fprint(w, `lkagent: LiveKit agent workers with deployments (staging, canary, production side by side)

Usage: lkagent <command> [flags]

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	_ = tw.Flush()
	fmt.Fprint(w, `
Run 'lkagent <command> --help' for the flags of a command. Commands that talk
to a LiveKit server read --url, --api-key and --api-secret, which default to
LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET.

Exit status: 0 done, 1 failed, 2 bad command line, 130 interrupted.
`)
}

// usageError is a bad command line: exit status 2, nothing was done.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// usagef returns a usageError for the command name, pointing at its help.
func usagef(name, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...) + fmt.Sprintf(" (see 'lkagent %s --help')", name)}
}

// signalError is the cause of the context cancelled by a signal.
type signalError struct{ sig os.Signal }

func (e *signalError) Error() string {
	switch e.sig {
	case os.Interrupt:
		return "interrupted (SIGINT)"
	case syscall.SIGTERM:
		return "stopped (SIGTERM)"
	}
	return "stopped by signal " + e.sig.String()
}

// interrupted returns the error a command reports when ctx ended before it
// was done: the signal that stopped it, or ctx's error.
func interrupted(ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return ctx.Err()
}

// flags is a command's flag set. Each flag may also be set from an
// environment variable; a flag on the command line wins.
type flags struct {
	name  string // command name
	short string // what the command does, shown by --help
	usage string // synopsis after the command name
	fs    *flag.FlagSet
	envOf map[string]string // flag name → environment variable
	byEnv map[string]bool   // flags whose value came from their variable
	req   map[string]bool   // required flags
	conn  map[string]bool   // connection flags, listed apart in the help
}

func newFlags(name, usage, short string) *flags {
	fs := flag.NewFlagSet("lkagent "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flags{name: name, usage: usage, short: short, fs: fs, envOf: map[string]string{}, byEnv: map[string]bool{}, req: map[string]bool{}, conn: map[string]bool{}}
}

// env ties flag name to the environment variable envVar.
func (f *flags) env(name, envVar string) {
	f.envOf[name] = envVar
}

// required marks flags that must be set (on the command line or from the
// environment).
func (f *flags) required(names ...string) {
	for _, n := range names {
		f.req[n] = true
	}
}

// parse parses args and fills flags not given from their environment
// variables. It returns flag.ErrHelp after printing the help for --help, and
// a usageError for anything wrong.
func (f *flags) parse(e *env, args []string) error {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			f.printHelp(e.stdout)
			return flag.ErrHelp
		}
		return usagef(f.name, "%v", err)
	}
	if f.fs.NArg() > 0 {
		return usagef(f.name, "unexpected argument %q: every value is given with a flag", f.fs.Arg(0))
	}
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	names := make([]string, 0, len(f.envOf))
	for n := range f.envOf {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if set[n] {
			continue
		}
		if v := e.getenv(f.envOf[n]); v != "" {
			if err := f.fs.Set(n, v); err != nil {
				return usagef(f.name, "$%s: invalid value for --%s: %v", f.envOf[n], n, err)
			}
			set[n] = true
			f.byEnv[n] = true
		}
	}
	for n := range f.req {
		if !set[n] {
			fl := f.fs.Lookup(n)
			hint := ""
			if v := f.envOf[n]; v != "" {
				hint = " or $" + v
			}
			return usagef(f.name, "missing --%s%s: %s", n, hint, fl.Usage)
		}
	}
	return nil
}

// isSet reports whether the flag was given (on the command line or from the
// environment); valid after parse.
func (f *flags) isSet(name string) bool {
	found := false
	f.fs.Visit(func(fl *flag.Flag) {
		if fl.Name == name {
			found = true
		}
	})
	return found
}

// source names where the flag's value came from, for messages: its
// environment variable ("LIVEKIT_AGENT_DEPLOYMENT") when it was read from
// there, else the flag ("--deployment"); valid after parse.
func (f *flags) source(name string) string {
	if f.byEnv[name] {
		return f.envOf[name]
	}
	return "--" + name
}

// envNotes says which values came from the environment, one line each
// ("deployment: staging (from LIVEKIT_AGENT_DEPLOYMENT)"), so that a value
// exported for something else never goes unnoticed. The LiveKit connection
// settings (url, api-key, api-secret) are left out: every LiveKit tool
// reads them so, and the secret is never shown.
func (f *flags) envNotes() []string {
	var notes []string
	f.fs.VisitAll(func(fl *flag.Flag) {
		switch {
		case !f.byEnv[fl.Name], fl.Name == "url", fl.Name == "api-key", fl.Name == "api-secret":
			return
		}
		notes = append(notes, fmt.Sprintf("%s: %s (from %s)", fl.Name, deploy.Escape(fl.Value.String()), f.envOf[fl.Name]))
	})
	return notes
}

// printEnvNotes writes f's envNotes to e's stderr, each line prefixed with
// the command's name, leaving stdout to the command's output.
func (f *flags) printEnvNotes(e *env) {
	for _, n := range f.envNotes() {
		fmt.Fprintf(e.stderr, "lkagent %s: %s\n", f.name, n)
	}
}

func (f *flags) printHelp(w io.Writer) {
	fmt.Fprintf(w, "Usage: lkagent %s %s\n\n%s\n", f.name, f.usage, f.short)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, conn := range []bool{false, true} {
		first := true
		f.fs.VisitAll(func(fl *flag.Flag) {
			if f.conn[fl.Name] != conn {
				return
			}
			if first {
				title := "Flags"
				if conn {
					title = "Connection flags"
				}
				fmt.Fprintf(tw, "\n%s:\n", title)
				first = false
			}
			f.printFlag(tw, fl)
		})
	}
	_ = tw.Flush()
}

func (f *flags) printFlag(tw io.Writer, fl *flag.Flag) {
	typ, usage := flag.UnquoteUsage(fl)
	name := "--" + fl.Name
	if typ != "" {
		name += " " + typ
	}
	var notes []string
	if f.req[fl.Name] {
		notes = append(notes, "required")
	}
	if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "0" {
		notes = append(notes, "default "+fl.DefValue)
	}
	if v := f.envOf[fl.Name]; v != "" {
		notes = append(notes, "env "+v)
	}
	if len(notes) > 0 {
		usage += " (" + strings.Join(notes, "; ") + ")"
	}
	fmt.Fprintf(tw, "  %s\t%s\n", name, usage)
}
