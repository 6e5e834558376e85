// Package job is what an agent's code sees of one LiveKit agent job: the
// [Job] a handler runs, and the [Request] an offer handler decides on.
//
// A handler is a [Handler]: it receives the job's context, which is cancelled
// when the server terminates the job, when the worker drains past its
// deadline, or when the handler calls [Job.Shutdown]. The usual handler joins
// the job's room and serves until then:
//
//	func handle(ctx context.Context, j *job.Job) error {
//		room, err := j.Connect(ctx, lksdk.NewRoomCallback())
//		if err != nil {
//			return err
//		}
//		j.Logger().Info("joined", "participants", len(room.GetRemoteParticipants()))
//		<-ctx.Done()
//		return nil
//	}
//
// The job lasts as long as the handler: returning ends it (the worker
// leaves the room and reports the end). A handler that greets a caller
// must stay until the call is over.
//
// Jobs are created by the runtime (package worker). Tests of a handler run
// it without a server with package jobtest, and against a real server with
// package livekittest.
package job
