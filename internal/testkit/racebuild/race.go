//go:build race

package racebuild

// Enabled says whether this binary was built with the race detector.
const Enabled = true
