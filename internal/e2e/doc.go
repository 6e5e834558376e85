// Package e2e holds the end-to-end tests of the worker against a real
// LiveKit server started by internal/testkit/lkserver. It has no code of its own.
package e2e
