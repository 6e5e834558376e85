package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/worker"
)

func runToken(ctx context.Context, e *env, args []string) error {
	const name = "token"
	f := newFlags(name, "--identity ID --room ROOM [--agent-name NAME [--deployment D]] [flags]\n       lkagent token --decode TOKEN [--api-secret SECRET] [--json]",
		"Prints a join token for ROOM. With --agent-name, the token's room configuration dispatches that\n"+
			"agent, of deployment D, when its holder creates the room by joining it (token-based dispatch).\n"+
			"With --decode, shows the claims of TOKEN instead, and verifies its signature when an API secret\n"+
			"is given (--api-secret or $LIVEKIT_API_SECRET).")
	apiKey := f.fs.String("api-key", "", "API key that signs the token")
	apiSecret := f.fs.String("api-secret", "", "API secret that signs (or verifies) the token; never printed")
	identity := f.fs.String("identity", "", "participant identity")
	room := f.fs.String("room", "", "room the token may join")
	pname := f.fs.String("name", "", "participant display name")
	agentName := f.fs.String("agent-name", "", "agent to dispatch when the holder creates the room")
	deployment := f.fs.String("deployment", "", "deployment of that agent; empty is production")
	agentMeta := f.fs.String("agent-metadata", "", "metadata handed to the dispatched agent's job")
	ttl := f.fs.Duration("ttl", time.Hour, "how long the token is valid")
	decode := f.fs.String("decode", "", "decode this token instead of creating one")
	asJSON := f.fs.Bool("json", false, "print JSON (the token and its claims) instead of text")
	f.env("api-key", "LIVEKIT_API_KEY")
	f.env("api-secret", "LIVEKIT_API_SECRET")
	f.env("room", "LKAGENT_ROOM")
	f.env("agent-name", "LKAGENT_AGENT_NAME")
	f.env("deployment", worker.EnvDeployment)
	if err := f.parse(e, args); err != nil {
		return err
	}
	if f.isSet("decode") {
		return decodeToken(e.stdout, *decode, *apiKey, *apiSecret, *asJSON)
	}
	switch {
	case *identity == "":
		return usagef(name, "missing --identity: the participant identity the token joins as")
	case *room == "":
		return usagef(name, "missing --room or $LKAGENT_ROOM: the room the token may join")
	case *deployment != "" && *agentName == "":
		return usagef(name, "--deployment needs --agent-name: a deployment selects workers of an agent")
	case *agentMeta != "" && *agentName == "":
		return usagef(name, "--agent-metadata needs --agent-name")
	case *ttl <= 0:
		return usagef(name, "--ttl must be positive")
	}
	if err := checkTarget(e, f, *agentName, *deployment); err != nil {
		return err
	}
	if *apiKey == "" || *apiSecret == "" {
		return usagef(name, "missing --api-key/--api-secret or $LIVEKIT_API_KEY/$LIVEKIT_API_SECRET: they sign the token")
	}
	f.printEnvNotes(e)
	token, err := joinToken(*apiKey, *apiSecret, *identity, *pname, *room, *agentName, *deployment, *agentMeta, *ttl)
	if err != nil {
		return err
	}
	if !*asJSON {
		fmt.Fprintln(e.stdout, token)
		return nil
	}
	d, err := parseToken(token)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Token string `json:"token"`
		decodedJSON
	}{token, d.json(true)})
}

// joinToken signs a token that joins room as identity and, when agentName is
// set, dispatches that agent's deployment when the holder creates the room.
func joinToken(key, secret, identity, name, room, agentName, deployment, agentMeta string, ttl time.Duration) (string, error) {
	at := auth.NewAccessToken(key, secret).
		SetIdentity(identity).
		SetName(name).
		SetValidFor(ttl).
		SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: room})
	if agentName != "" {
		at.SetRoomConfig(&livekit.RoomConfiguration{Agents: []*livekit.RoomAgentDispatch{{
			AgentName: agentName, Deployment: deployment, Metadata: agentMeta,
		}}})
	}
	t, err := at.ToJWT()
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return t, nil
}

// decoded is a token's claims, read without verifying the signature.
type decoded struct {
	Issuer    string `json:"iss"`
	Subject   string `json:"sub"`
	NotBefore int64  `json:"nbf"`
	Expiry    int64  `json:"exp"`
	auth.ClaimGrants
}

// parseToken decodes a JWT's claims without verifying it.
func parseToken(raw string) (*decoded, error) {
	parts := strings.Split(strings.TrimSpace(raw), ".")
	if len(parts) != 3 {
		return nil, errors.New("not a JWT: a token has three dot-separated parts")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, fmt.Errorf("not a JWT: the claims are not base64url: %v", err)
	}
	d := &decoded{}
	if err := json.Unmarshal(payload, d); err != nil {
		return nil, fmt.Errorf("not a LiveKit token: the claims do not parse: %v", err)
	}
	return d, nil
}

// room is the room the token may join.
func (d *decoded) room() string {
	if d.Video == nil {
		return ""
	}
	return d.Video.Room
}

// agents returns the agents the token's room configuration dispatches.
func (d *decoded) agents() []*livekit.RoomAgentDispatch {
	return d.GetRoomConfiguration().GetAgents()
}

// decodedJSON is how --json shows a token's claims.
type decodedJSON struct {
	Verified  bool              `json:"verified"`
	APIKey    string            `json:"api_key"`
	Identity  string            `json:"identity"`
	Name      string            `json:"name,omitempty"`
	Room      string            `json:"room"`
	NotBefore time.Time         `json:"not_before,omitzero"`
	ExpiresAt time.Time         `json:"expires_at,omitzero"`
	Expired   bool              `json:"expired"`
	Agents    []agentClaimJSON  `json:"agents"`
	Grants    *auth.ClaimGrants `json:"grants"`
}

type agentClaimJSON struct {
	AgentName  string `json:"agent_name"`
	Deployment string `json:"deployment"`
	Metadata   string `json:"metadata"`
}

func unixTime(s int64) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(s, 0).UTC()
}

func (d *decoded) json(verified bool) decodedJSON {
	out := decodedJSON{
		Verified:  verified,
		APIKey:    d.Issuer,
		Identity:  d.Subject,
		Name:      d.Name,
		Room:      d.room(),
		NotBefore: unixTime(d.NotBefore),
		ExpiresAt: unixTime(d.Expiry),
		Expired:   d.Expiry != 0 && time.Now().Unix() > d.Expiry,
		Agents:    []agentClaimJSON{},
		Grants:    &d.ClaimGrants,
	}
	for _, a := range d.agents() {
		out.Agents = append(out.Agents, agentClaimJSON{AgentName: a.GetAgentName(), Deployment: a.GetDeployment(), Metadata: a.GetMetadata()})
	}
	return out
}

// decodeToken shows a token's claims and, given the secret, verifies it.
func decodeToken(w io.Writer, raw, key, secret string, asJSON bool) error {
	if strings.TrimSpace(raw) == "" {
		return usagef("token", "--decode needs the token to decode")
	}
	d, err := parseToken(raw)
	if err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	var verifyErr error
	verified := false
	if secret != "" {
		v, err := auth.ParseAPIToken(strings.TrimSpace(raw))
		if err == nil {
			_, _, err = v.Verify(secret)
		}
		if err != nil {
			hint := ""
			if key != "" && d.Issuer != key {
				hint = fmt.Sprintf(" (it was signed for API key %q; the key given is %q)", d.Issuer, key)
			}
			verifyErr = fmt.Errorf("the token does not verify with the API secret given: %v%s", err, hint)
		} else {
			verified = true
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(d.json(verified)); err != nil {
			return err
		}
		return verifyErr
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	switch {
	case verified:
		fmt.Fprintln(tw, "signature\tverified with the API secret")
	case verifyErr != nil:
		fmt.Fprintln(tw, "signature\tDOES NOT VERIFY with the API secret given")
	default:
		fmt.Fprintln(tw, "signature\tnot verified (no API secret: pass --api-secret or set LIVEKIT_API_SECRET)")
	}
	fmt.Fprintf(tw, "api key\t%s\n", orDash(d.Issuer))
	fmt.Fprintf(tw, "identity\t%s\n", orDash(d.Subject))
	if d.Name != "" {
		fmt.Fprintf(tw, "name\t%s\n", d.Name)
	}
	fmt.Fprintf(tw, "room\t%s\n", orDash(d.room()))
	if d.Video != nil {
		fmt.Fprintf(tw, "video grant\t%s\n", videoGrantSummary(d.Video))
	}
	if d.Expiry != 0 {
		exp := unixTime(d.Expiry)
		state := "valid for " + time.Until(exp).Round(time.Second).String()
		if time.Now().After(exp) {
			state = "EXPIRED " + time.Since(exp).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "expires\t%s (%s)\n", exp.Format(time.RFC3339), state)
	}
	agents := d.agents()
	if len(agents) == 0 {
		fmt.Fprintln(tw, "dispatches\tno agent (the room configuration names none)")
	}
	for i, a := range agents {
		label := "dispatches"
		if i > 0 {
			label = ""
		}
		s := fmt.Sprintf("agent %q, deployment %s", a.GetAgentName(), deploymentLabel(a.GetDeployment()))
		if a.GetMetadata() != "" {
			s += fmt.Sprintf(", metadata %q", a.GetMetadata())
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, s)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return verifyErr
}

// videoGrantSummary lists the granted room actions.
func videoGrantSummary(v *auth.VideoGrant) string {
	var s []string
	add := func(ok bool, name string) {
		if ok {
			s = append(s, name)
		}
	}
	add(v.RoomJoin, "roomJoin")
	add(v.RoomAdmin, "roomAdmin")
	add(v.RoomCreate, "roomCreate")
	add(v.RoomList, "roomList")
	add(v.RoomRecord, "roomRecord")
	add(v.Agent, "agent")
	add(v.Hidden, "hidden")
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ", ")
}
