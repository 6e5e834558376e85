package sdklog

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
)

// The SDK logs structured values it does not vet: its connection
// parameters and plan at debug level, errors of signal connections whose
// URL may carry an access_token, whatever a caller passed to WithValues.
// A token lets whoever reads the log join the room as the agent, so none
// reaches the worker's logger: any value whose text (as a text or a JSON
// handler would write it) holds a JWT is logged with the token replaced.
var jwt = regexp.MustCompile(`eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`)

// redacted stands in for a token.
const redacted = "[redacted token]"

// redactAll returns kv (key-value pairs or slog.Attrs) with every value
// that holds a token replaced by its text with the token redacted. It
// copies kv only when something is redacted.
func redactAll(kv []any) []any {
	var out []any
	for i, v := range kv {
		var r any
		if a, ok := v.(slog.Attr); ok {
			if s, ok := redacts(a.Value.Any()); ok {
				r = slog.String(a.Key, s)
			}
		} else if s, ok := redacts(v); ok {
			r = s
		}
		if r == nil {
			continue
		}
		if out == nil {
			out = append([]any(nil), kv...)
		}
		out[i] = r
	}
	if out == nil {
		return kv
	}
	return out
}

// redact returns v, or, if its text holds a token, that text with the
// token redacted.
func redact(v any) any {
	if s, ok := redacts(v); ok {
		return s
	}
	return v
}

// redacts returns the text of v with its tokens redacted, and true, if
// its text holds a token. It looks at what a text or a JSON handler would
// write: fmt's rendering and, for structured values, their JSON.
func redacts(v any) (string, bool) {
	switch x := v.(type) {
	case nil, bool, int, int64, uint32, uint64, float64:
		return "", false
	case string:
		return replaceTokens(x)
	case error:
		return replaceTokens(x.Error())
	}
	if s, ok := replaceTokens(fmt.Sprintf("%+v", v)); ok {
		return s, true
	}
	switch reflect.ValueOf(v).Kind() {
	case reflect.Pointer, reflect.Struct, reflect.Map, reflect.Slice:
		if b, err := json.Marshal(v); err == nil {
			return replaceTokens(string(b))
		}
	}
	return "", false
}

func replaceTokens(s string) (string, bool) {
	if !jwt.MatchString(s) {
		return "", false
	}
	return jwt.ReplaceAllString(s, redacted), true
}
