// Package job is what an agent's code sees of one LiveKit agent job: the
// [Job] a handler runs, and the [Request] an offer handler decides on.
//
// A handler is a [Handler]: it receives the job's context, which is cancelled
// when the server terminates the job, when the worker drains past its
// deadline, or when the handler calls [Job.Shutdown]. The usual handler joins
// the job's room and serves its caller until they leave:
//
//	func handle(ctx context.Context, j *job.Job) error {
//		j.OnParticipant(func(ctx context.Context, caller *lksdk.RemoteParticipant) {
//			serve(ctx, j, caller) // until ctx is done: the caller left
//			j.Shutdown("caller left")
//		})
//		if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
//			return err
//		}
//		<-ctx.Done() // the call is over, or the server ended the job
//		return nil
//	}
//
// # Returning ends the job
//
// The job lasts as long as the handler: returning ends it (the worker
// cancels the job's context, leaves the room and reports the end). A
// handler that greets a caller and returns hangs up on them before the
// greeting arrives: it must stay until the call is over.
//
// # Participants
//
// [Job.WaitForParticipant] returns the first participant that matches
// (by default any participant that is not an agent; [WithIdentity] and
// [WithKind] narrow it), whether it joined before the call or after.
// [Job.OnParticipant] runs a function for each matching participant, with
// a context that ends when that participant leaves. Both need
// [Job.Connect]'s room and never block the SDK's callbacks; the callbacks
// passed to Connect still run.
//
// # Goroutines and failures
//
// [Job.Go] starts a goroutine the job owns: the job's end waits for it,
// and a panic or an error in it fails the job (its context is cancelled
// with the failure, and the worker reports the job failed) instead of the
// process. The participant helpers and the room callbacks are guarded the
// same way. What in-process jobs cannot contain, and job processes
// (worker.Processes) can, is listed at [Job.Go].
//
// # The server API
//
// [Job.API] gives clients of the server's room, agent dispatch and egress
// services, authorized with the worker's credentials; [Job.DeleteRoom]
// ends the call for everyone.
//
// Jobs are created by the runtime (package worker). Tests of a handler run
// it without a server with package jobtest, and against a real server with
// package livekittest.
package job
