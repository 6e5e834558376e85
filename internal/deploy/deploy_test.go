package deploy

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckDeployment(t *testing.T) {
	tests := []struct {
		name, d    string
		err        string // part of the error, "" for none
		production bool   // the error is ErrNamedLikeProduction
		warning    string // part of the warning, "" for none
	}{
		{name: "production", d: ""},
		{name: "plain", d: "staging"},
		{name: "dashes and dots", d: "eu-west.canary-2"},
		{name: "64 bytes", d: strings.Repeat("d", 64)},
		{name: "65 bytes", d: strings.Repeat("d", 65), err: "exceeds 64 bytes"},
		{name: "underscore", d: "prod_us", err: "reserved character '_'"},
		{name: "trailing space", d: "staging ", err: "whitespace"},
		{name: "tab", d: "stag\ting", err: "whitespace"},
		{name: "newline", d: "staging\n", err: "whitespace"},
		{name: "no-break space", d: "staging\u00a0", err: "space character U+00A0"},
		{name: "zero-width space", d: "stag\u200bing", err: "invisible or control character U+200B"},
		{name: "byte order mark", d: "\ufeffstaging", err: "U+FEFF"},
		{name: "invalid UTF-8", d: "stag\xffing", err: "not valid UTF-8"},
		{name: "named production", d: "production", production: true},
		{name: "named Production", d: "Production", production: true},
		{name: "named PROD", d: "PROD", production: true},
		{name: "named prd", d: "prd", production: true},
		{name: "named default", d: "default", production: true},
		{name: "quoted production", d: `"production"`, production: true},
		{name: "a pair of quotes", d: `""`, production: true},
		{name: "single quotes", d: `''`, production: true},
		{name: "production in parentheses", d: "(production)", production: true},
		{name: "a production region is a deployment", d: "prod-eu"},
		{name: "Cyrillic a in staging", d: "st\u0430ging", warning: "mixes scripts (Cyrillic, Latin)"},
		{name: "all Cyrillic", d: "\u0441\u0442\u0430\u0434\u0438\u044f", warning: "Cyrillic"},
		{name: "accented Latin", d: "préprod", warning: "U+00E9"},
		{name: "Greek omicron", d: "pr\u03bfd", warning: "Greek"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			warning, err := CheckDeployment(tt.d)
			switch {
			case tt.production:
				if !errors.Is(err, ErrNamedLikeProduction) {
					t.Fatalf("CheckDeployment(%q) = %v, want ErrNamedLikeProduction", tt.d, err)
				}
				if !strings.Contains(err.Error(), `production is the empty deployment ""`) {
					t.Errorf("error does not say what production is: %v", err)
				}
			case tt.err != "":
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("CheckDeployment(%q) = %v, want an error containing %q", tt.d, err, tt.err)
				}
			case err != nil:
				t.Fatalf("CheckDeployment(%q) = %v, want no error", tt.d, err)
			}
			if tt.warning == "" && warning != "" || !strings.Contains(warning, tt.warning) {
				t.Errorf("warning %q, want one containing %q", warning, tt.warning)
			}
		})
	}
}

func TestCheckAgentName(t *testing.T) {
	tests := []struct{ name, n, err string }{
		{"automatic", "", ""},
		{"plain", "support-bot", ""},
		{"inner space", "support bot", ""},
		{"newline", "bot\nx", "control character U+000A"},
		{"carriage return", "bot\r", "U+000D"},
		{"escape", "bot\x1b[2J", "U+001B"},
		{"zero-width joiner", "bo\u200dt", "U+200D"},
		{"trailing space", "bot ", "spaces at its start or end"},
		{"invalid UTF-8", "bot\xfe", "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckAgentName(tt.n)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("CheckAgentName(%q) = %v, want %q", tt.n, err, tt.err)
			}
		})
	}
}

func TestErrorNamesItsSource(t *testing.T) {
	_, err := CheckDeployment("staging ")
	e := &Error{Source: "LIVEKIT_AGENT_DEPLOYMENT", Value: "staging ", Err: err}
	if got := e.Error(); !strings.HasPrefix(got, `LIVEKIT_AGENT_DEPLOYMENT="staging ": `) {
		t.Errorf("Error() = %q", got)
	}
	e = &Error{Source: "--deployment", Value: "stag\u200bing", Err: errors.New("x")}
	if got := e.Error(); got != `--deployment="stag\u200bing": x` {
		t.Errorf("Error() = %q", got)
	}
	_, err = CheckDeployment("production")
	if !errors.Is(&Error{Source: "s", Err: err}, ErrNamedLikeProduction) {
		t.Error("Error does not unwrap to its rule")
	}
}

func TestEscapeAndLabel(t *testing.T) {
	tests := []struct{ in, want string }{
		{"bot", "bot"},
		{"support bot", "support bot"},
		{"préprod", "préprod"},
		{"bot\nname", `"bot\nname"`},
		{"a\tb", `"a\tb"`},
		{"x\u200by", `"x\u200by"`},
		{"bad\xff", `"bad\xff"`},
	}
	for _, tt := range tests {
		if got := Escape(tt.in); got != tt.want {
			t.Errorf("Escape(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
	if Label("") != ProductionLabel || Label("staging") != "staging" {
		t.Errorf("Label: %q %q", Label(""), Label("staging"))
	}
	if _, err := CheckDeployment(ProductionLabel); err == nil {
		t.Errorf("the production label %q is a valid deployment: it could collide with one", ProductionLabel)
	}
}
