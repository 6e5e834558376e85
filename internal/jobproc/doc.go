// Package jobproc runs jobs in processes of their own, so that a job that
// dies (a fatal runtime error such as concurrent map writes, os.Exit, the
// out-of-memory killer, a crash in C code) takes down only itself. The
// parent, which keeps the connection to the server and all bookkeeping,
// owns a [Pool]; each job process is the same binary re-executed with the
// same arguments and an environment variable that [IsChild] detects. The
// child runs the program's main up to the point where it would start its
// worker; there it calls [Serve] instead, which reports ready over a
// socket pair inherited as descriptor 3 and runs the one job the parent
// hands it, then returns so the process can exit. The pool keeps Idle
// processes warm, kills those that pass a memory limit, stop answering
// pings or outlive their job, relays their log records and stderr to the
// parent's logger, and reports each one's end ([End]): the child's own
// report of success, failure or panic, or how it died, with the last lines
// of its stderr. Children are in a process group of their own, so the
// signals meant for the parent do not reach them; what a job process
// leaves running in its group is killed when it exits (on Linux), and on
// Linux job processes are killed if the parent dies.
//
// The channel carries length-prefixed frames with a type byte: the
// protocol module's messages (livekit.Job, UpdateJobStatus,
// JobJoinTiming) in protobuf, the rest in small protobuf-encoded envelopes
// of this package's (see the frame types in wire.go). The child's hello
// carries the protocol version; a process that speaks another one is not
// used.
package jobproc
