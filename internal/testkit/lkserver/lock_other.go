//go:build !unix

package lkserver

import (
	"context"
	"errors"
)

// lockFile is not implemented on this platform; set LIVEKIT_SERVER_BIN or
// pre-populate the cache instead.
func lockFile(context.Context, string, func()) (func(), error) {
	return nil, errors.New("building livekit-server is only supported on unix; set " + EnvServerBinary)
}
