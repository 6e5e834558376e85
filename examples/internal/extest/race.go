//go:build race

package extest

// raceBuild: the tests run with the race detector, and so do the examples
// they build.
const raceBuild = true
