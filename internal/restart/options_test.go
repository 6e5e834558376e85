package restart

import (
	"errors"
	"testing"
)

// The guard's option errors keep their text: they begin with "guard:", and
// they are OptionErrors, the worker's type.
func TestOptionErrorsSayGuard(t *testing.T) {
	t.Parallel()
	none := func(string) string { return "" }
	_, connErr := Options{}.withDefaults(none)
	_, capErr := Options{URL: "ws://h", APIKey: "k", APISecret: "s", MaxRestarts: -1}.withDefaults(none)
	_, heldErr := NewHeld(HeldOptions{URL: "ws://h", APIKey: "k", APISecret: "s", After: -1})
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"missing URL", connErr, "guard: option URL: required: set Options.URL or LIVEKIT_URL (for example ws://127.0.0.1:7880)"},
		{"value", capErr, `guard: option MaxRestarts = "-1": must be at least 1 (0 = the default, 3)`},
		{"held", heldErr, `guard: option After/Interval = "-1ns/10s": must not be negative`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var oe *OptionError
			if !errors.As(tc.err, &oe) {
				t.Fatalf("error %v (%T), want an *OptionError", tc.err, tc.err)
			}
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("error = %q, want %q", got, tc.want)
			}
		})
	}
}
