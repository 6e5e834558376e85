// Package restart is the restart engine behind package guard and the
// worker's restarts: the rules that decide whether a failed agent is
// restarted ([Restarter]), the receiver of the server's webhooks
// ([Webhook]) and the sweeper of held dispatches ([Held]). Package guard
// gives these their public names and documents them for users; the worker
// uses this package directly, so that a public package does not carry the
// runtime's plumbing.
package restart
