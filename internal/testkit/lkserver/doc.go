// Package lkserver runs real LiveKit server processes (and the Redis they
// need for multi-node setups) for tests and demos.
//
// Servers listen on 127.0.0.1 (the WebRTC ICE/TCP port excepted, see
// [Options]) on ports picked at runtime, so test packages running in
// parallel never collide. The server binary is a pinned
// livekit-server release ([Version]) that [Binary] locates or builds once per
// machine.
//
// Child processes are started in their own process group and, on Linux, are
// killed by the kernel when the process that started them dies, so a crashed
// or killed test binary never leaves a server behind.
//
// In a test:
//
//	srv := lkserver.StartTB(t, lkserver.Options{})
//	room, err := lksdk.ConnectToRoom(srv.URL(), lksdk.ConnectInfo{
//		APIKey: srv.APIKey(), APISecret: srv.APISecret(),
//		RoomName: "room", ParticipantIdentity: "alice",
//	}, nil)
//
// Several nodes sharing a Redis:
//
//	r := lkserver.StartRedisTB(t)
//	a := lkserver.StartTB(t, lkserver.Options{RedisAddr: r.Addr()})
//	b := lkserver.StartTB(t, lkserver.Options{RedisAddr: r.Addr(), APIKey: a.APIKey(), APISecret: a.APISecret()})
//
// To share one server between the tests of a package, see [RunMain] and
// [Shared].
//
// Under go test -short (the inner loop) nothing here starts a server:
// [StartTB], [StartRedisTB] and [Shared.Server] skip the test, and [RunMain]
// runs no test of its package (see [SkipShort]).
package lkserver

import "time"

// RegistrationSettle is how long to wait after a worker registered before
// dispatching to it. The server (v1.13.5) answers a registration before it
// adds the worker to its routing tables and refreshes its cache of agent
// names; a dispatch created in that window is dropped ("not dispatching
// agent job since no worker is available") and never retried. Tests and
// the demo wait this long; production workers register long before their
// dispatches come.
const RegistrationSettle = 500 * time.Millisecond

// AwaitRouting waits the moment the server needs after a worker registered
// before it routes dispatches to it (RegistrationSettle). The server
// exposes nothing that says it is done, so tests wait for it blindly, and
// only here.
func AwaitRouting() { time.Sleep(RegistrationSettle) }
