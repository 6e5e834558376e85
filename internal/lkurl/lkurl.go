// Package lkurl checks and converts the URL of a LiveKit server, the one
// way for every package that takes one: its problems are described
// without ever showing a password or a query, which may hold secrets.
package lkurl

import (
	"net/url"
	"strings"
)

// Problem says what is wrong with raw as a LiveKit server's base URL, or
// "" when nothing is. Shown is raw as it may be printed: without a user,
// password, query or fragment.
func Problem(raw string) (shown, problem string) {
	if !strings.Contains(raw, "://") {
		shown = raw[strings.LastIndex(raw, "@")+1:] // never a user or password
		return shown, "has no scheme: write ws://" + shown + " for a plain server or wss://" + shown + " for TLS"
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", "not a URL: check its syntax"
	}
	shown = (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	switch {
	case u.Scheme != "ws" && u.Scheme != "wss" && u.Scheme != "http" && u.Scheme != "https":
		return shown, "scheme must be ws, wss, http or https"
	case u.Host == "":
		return shown, "has no host"
	case u.User != nil:
		return shown, "must not carry a user or password: authenticate with the API key and secret; remove the user@ part"
	case u.RawQuery != "" || u.Fragment != "":
		return shown, "must not have a query or fragment: give the server's base URL"
	}
	return shown, ""
}

// WS converts an http(s) URL to ws(s); a ws(s) URL keeps its scheme.
// Schemes are case-insensitive (HTTP:// is http://) and come back in
// lower case; anything else is returned as it is.
func WS(base string) string {
	scheme, rest, ok := splitScheme(base)
	switch {
	case !ok:
		return base
	case scheme == "http" || scheme == "ws":
		return "ws://" + rest
	case scheme == "https" || scheme == "wss":
		return "wss://" + rest
	}
	return base
}

// HTTP converts a ws(s) URL to http(s); an http(s) URL keeps its scheme.
// Schemes are case-insensitive (WSS:// is wss://) and come back in lower
// case; anything else is returned as it is.
func HTTP(base string) string {
	scheme, rest, ok := splitScheme(base)
	switch {
	case !ok:
		return base
	case scheme == "ws" || scheme == "http":
		return "http://" + rest
	case scheme == "wss" || scheme == "https":
		return "https://" + rest
	}
	return base
}

// splitScheme splits base at its "://" and returns its scheme in lower
// case, as URL schemes are case-insensitive (RFC 3986, section 3.1).
func splitScheme(base string) (scheme, rest string, ok bool) {
	scheme, rest, ok = strings.Cut(base, "://")
	return strings.ToLower(scheme), rest, ok
}
