package worker

import "time"

// SetStatusDelay changes the worker's StatusDelay, for tests and
// benchmarks against a fake server without the real server's assignment
// race, where the delay would only slow every job down.
func SetStatusDelay(w *Worker, d time.Duration) { w.statusDelay = d }
