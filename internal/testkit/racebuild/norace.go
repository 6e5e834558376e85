//go:build !race

// Package racebuild says whether the binary was built with the race
// detector: tests build the programs they run with -race when they run
// under it themselves, and give time-bound work the room it needs there.
package racebuild

// Enabled says whether this binary was built with the race detector.
const Enabled = false
