//go:build race

package main

// raceBuild: the tests run with the race detector, and so does the program
// they build.
const raceBuild = true
