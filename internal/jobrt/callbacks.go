package jobrt

import (
	"runtime/debug"

	lksdk "github.com/livekit/server-sdk-go/v2"
)

// wrapCallback returns the callbacks Connect joins the room with: cb's own
// (nil: none), each guarded so that a panic fails the job instead of the
// process, and the job's handling of room events next to them. The job's
// part never blocks: the SDK calls callbacks on its own goroutines, some
// of them on the goroutine that reads the room's signalling.
func (j *Job) wrapCallback(cb *lksdk.RoomCallback) *lksdk.RoomCallback {
	c := lksdk.RoomCallback{}
	if cb != nil {
		c = *cb
	}
	j.guardCallbacks(&c)

	userConnected := c.OnParticipantConnected
	c.OnParticipantConnected = func(p *lksdk.RemoteParticipant) {
		j.watchers.wake()
		if userConnected != nil {
			userConnected(p)
		}
	}
	userLeft := c.OnParticipantDisconnected
	c.OnParticipantDisconnected = func(p *lksdk.RemoteParticipant) {
		j.watchers.wake()
		if userLeft != nil {
			userLeft(p)
		}
	}
	userReconnected := c.OnReconnected
	c.OnReconnected = func() {
		j.watchers.wake() // a reconnection may bring a new list of participants
		if userReconnected != nil {
			userReconnected()
		}
	}
	userData := c.OnDataPacket
	c.OnDataPacket = func(p lksdk.DataPacket, params lksdk.DataReceiveParams) {
		j.chatPacket(p, params) // never blocks
		if userData != nil {
			userData(p, params)
		}
	}
	userDisconnected := c.OnDisconnectedWithReason
	c.OnDisconnectedWithReason = func(reason lksdk.DisconnectionReason) {
		if userDisconnected != nil {
			userDisconnected(reason)
		}
		j.cancel(ErrRoomDisconnected)
	}
	return &c
}

// guardCallbacks makes a panic in any of c's callbacks fail the job (the
// deprecated OnDataReceived too: the SDK still calls it).
func (j *Job) guardCallbacks(c *lksdk.RoomCallback) {
	c.OnDisconnected = guard0(j, "OnDisconnected", c.OnDisconnected)
	c.OnDisconnectedWithReason = guard1(j, "OnDisconnectedWithReason", c.OnDisconnectedWithReason)
	c.OnParticipantConnected = guard1(j, "OnParticipantConnected", c.OnParticipantConnected)
	c.OnParticipantDisconnected = guard1(j, "OnParticipantDisconnected", c.OnParticipantDisconnected)
	c.OnActiveSpeakersChanged = guard1(j, "OnActiveSpeakersChanged", c.OnActiveSpeakersChanged)
	c.OnRoomMetadataChanged = guard1(j, "OnRoomMetadataChanged", c.OnRoomMetadataChanged)
	c.OnRecordingStatusChanged = guard1(j, "OnRecordingStatusChanged", c.OnRecordingStatusChanged)
	c.OnRoomMoved = guard2(j, "OnRoomMoved", c.OnRoomMoved)
	c.OnRoomMovedWithSID = guard3(j, "OnRoomMovedWithSID", c.OnRoomMovedWithSID)
	c.OnReconnecting = guard0(j, "OnReconnecting", c.OnReconnecting)
	c.OnReconnected = guard0(j, "OnReconnected", c.OnReconnected)
	c.OnLocalTrackSubscribed = guard2(j, "OnLocalTrackSubscribed", c.OnLocalTrackSubscribed)

	p := &c.ParticipantCallback
	p.OnLocalTrackPublished = guard2(j, "OnLocalTrackPublished", p.OnLocalTrackPublished)
	p.OnLocalTrackUnpublished = guard2(j, "OnLocalTrackUnpublished", p.OnLocalTrackUnpublished)
	p.OnTrackMuted = guard2(j, "OnTrackMuted", p.OnTrackMuted)
	p.OnTrackUnmuted = guard2(j, "OnTrackUnmuted", p.OnTrackUnmuted)
	p.OnMetadataChanged = guard2(j, "OnMetadataChanged", p.OnMetadataChanged)
	p.OnAttributesChanged = guard2(j, "OnAttributesChanged", p.OnAttributesChanged)
	p.OnIsSpeakingChanged = guard1(j, "OnIsSpeakingChanged", p.OnIsSpeakingChanged)
	p.OnConnectionQualityChanged = guard2(j, "OnConnectionQualityChanged", p.OnConnectionQualityChanged)
	p.OnTrackSubscribed = guard3(j, "OnTrackSubscribed", p.OnTrackSubscribed)
	p.OnTrackUnsubscribed = guard3(j, "OnTrackUnsubscribed", p.OnTrackUnsubscribed)
	p.OnTrackSubscriptionFailed = guard2(j, "OnTrackSubscriptionFailed", p.OnTrackSubscriptionFailed)
	p.OnTrackPublished = guard2(j, "OnTrackPublished", p.OnTrackPublished)
	p.OnTrackUnpublished = guard2(j, "OnTrackUnpublished", p.OnTrackUnpublished)
	p.OnDataReceived = guard2(j, "OnDataReceived", p.OnDataReceived)
	p.OnDataPacket = guard2(j, "OnDataPacket", p.OnDataPacket)
	p.OnTranscriptionReceived = guard3(j, "OnTranscriptionReceived", p.OnTranscriptionReceived)
}

// recoverCallback turns a panic in the room callback name into the job's
// failure. It must be deferred.
func (j *Job) recoverCallback(name string) {
	if r := recover(); r != nil {
		j.fail(&PanicError{Value: r, Stack: debug.Stack(), Where: "room callback " + name})
	}
}

func guard0(j *Job, name string, fn func()) func() {
	if fn == nil {
		return nil
	}
	return func() {
		defer j.recoverCallback(name)
		fn()
	}
}

func guard1[A any](j *Job, name string, fn func(A)) func(A) {
	if fn == nil {
		return nil
	}
	return func(a A) {
		defer j.recoverCallback(name)
		fn(a)
	}
}

func guard2[A, B any](j *Job, name string, fn func(A, B)) func(A, B) {
	if fn == nil {
		return nil
	}
	return func(a A, b B) {
		defer j.recoverCallback(name)
		fn(a, b)
	}
}

func guard3[A, B, C any](j *Job, name string, fn func(A, B, C)) func(A, B, C) {
	if fn == nil {
		return nil
	}
	return func(a A, b B, c C) {
		defer j.recoverCallback(name)
		fn(a, b, c)
	}
}
