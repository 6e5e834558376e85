//go:build race

package main

// raceBuild: the tests run with the race detector, and so does the CLI they
// build.
const raceBuild = true
