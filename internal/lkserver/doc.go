// Package lkserver runs real LiveKit server processes (and the Redis they
// need for multi-node setups) for tests and demos.
//
// Every server listens on loopback only, on ports picked at runtime, so test
// packages running in parallel never collide. The server binary is a pinned
// livekit-server release ([Version]) that [Binary] locates or builds once per
// machine.
//
// Child processes are started in their own process group and, on Linux, are
// killed by the kernel when the process that started them dies, so a crashed
// or killed test binary never leaves a server behind.
package lkserver
