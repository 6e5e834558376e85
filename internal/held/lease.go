package held

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// LeasePrefix starts the names of the rooms that hold sweep leases. Sweeps
// skip them.
const LeasePrefix = "lkagent-held-sweep-"

// LeaseAPI is what a Lease needs of the server.
type LeaseAPI interface {
	// LeaseRoom returns the metadata of the named room; ok false if it
	// does not exist.
	LeaseRoom(ctx context.Context, room string) (metadata string, ok bool, err error)
	// WriteLease sets the metadata of the named room, creating the room
	// (with no agent of its own) if it does not exist.
	WriteLease(ctx context.Context, room, metadata string) error
}

// Lease coordinates the sweeps of a fleet of sweepers of one key, so that
// the fleet makes about one per period between them: before a sweep, a
// sweeper reads the time of the last sweep of its key from the metadata of
// a lease room on the server (one call) and sweeps only if it is older than
// the period, writing its own time first (a second call). Two sweepers
// reading at the same moment may both sweep: that costs a sweep, never a
// dispatch served twice (the claim sees to that).
type Lease struct {
	api    LeaseAPI
	room   string
	holder string
	now    func() time.Time
}

// NewLease returns the lease of key; holder names the sweeper in the
// lease (a worker ID). now nil = time.Now.
func NewLease(api LeaseAPI, key Key, holder string, now func() time.Time) *Lease {
	if now == nil {
		now = time.Now
	}
	return &Lease{api: api, room: LeaseRoom(key), holder: holder, now: now}
}

// LeaseRoom is the name of key's lease room.
func LeaseRoom(key Key) string {
	sum := sha256.Sum256([]byte(key.AgentName + "\x00" + key.Deployment))
	return LeasePrefix + hex.EncodeToString(sum[:8])
}

// Acquire reports whether the caller should sweep now: no sweep of the key
// was started within period. If so it records this sweep's start. calls is
// how many API calls it made.
func (l *Lease) Acquire(ctx context.Context, period time.Duration) (ok bool, calls int, err error) {
	md, exists, err := l.api.LeaseRoom(ctx, l.room)
	calls++
	if err != nil {
		return false, calls, fmt.Errorf("held: read the sweep lease: %w", err)
	}
	now := l.now()
	if exists {
		if last, ok := parseLease(md); ok && now.Sub(last) < period && now.Sub(last) > -period {
			return false, calls, nil
		}
	}
	calls++
	if err := l.api.WriteLease(ctx, l.room, strconv.FormatInt(now.UnixMilli(), 10)+" "+l.holder); err != nil {
		return false, calls, fmt.Errorf("held: write the sweep lease: %w", err)
	}
	return true, calls, nil
}

// parseLease reads "unix-ms holder".
func parseLease(md string) (time.Time, bool) {
	ms, _, _ := strings.Cut(md, " ")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(n), true
}
