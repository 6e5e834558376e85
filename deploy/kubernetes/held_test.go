package kubernetes

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

const (
	// guardComponent labels the Deployment of lkagent guard.
	guardComponent = "dispatch-guard"
	// fromZeroLabel marks the ScaledObject that scales a pool from zero.
	fromZeroLabel = "scale-from-zero"
	// unservedGauge is the guard's gauge of dispatches with no job.
	unservedGauge = "lkagent_dispatches_unserved"
)

// TestDispatchGuard: the guard runs `lkagent guard` for the agent, serves
// its metrics on a named port, reads its secrets from the Secret, and
// selects none of the workers' pods (nor they its).
func TestDispatchGuard(t *testing.T) {
	m := load(t)
	ws := workers(t, m)
	if len(m.guards) != 1 {
		t.Fatalf("%d Deployments labelled %s, want 1", len(m.guards), guardComponent)
	}
	g := m.guards[0]
	where := m.where(g)
	if g.Spec.Replicas == nil || *g.Spec.Replicas != 1 {
		t.Errorf("%s: want replicas: 1 (a second guard doubles its calls to the server)", where)
	}
	if len(g.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("%s: want one container", where)
	}
	c := g.Spec.Template.Spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "guard" {
		t.Fatalf("%s: args %v: want the guard command first", where, c.Args)
	}
	flags := map[string]string{}
	for _, a := range c.Args[1:] {
		k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok || !strings.HasPrefix(a, "--") {
			t.Errorf("%s: arg %q: want --flag=value", where, a)
		}
		flags[k] = v
	}
	if !strings.HasPrefix(flags["listen"], ":") {
		t.Errorf("%s: --listen=%q: want :PORT (all interfaces, for the probes and Prometheus)", where, flags["listen"])
	}
	port, err := strconv.ParseInt(strings.TrimPrefix(flags["listen"], ":"), 10, 32)
	if err != nil {
		t.Fatalf("%s: --listen=%q: %v", where, flags["listen"], err)
	}
	if agents := strings.Split(flags["held-agents"], ","); flags["held-agents"] != "" && !contains(agents, agentName) {
		t.Errorf("%s: --held-agents=%q leaves out %s", where, flags["held-agents"], agentName)
	}
	if flags["held"] == "false" {
		t.Errorf("%s: --held=false: the guard would export no %s", where, unservedGauge)
	}
	var named bool
	for _, p := range c.Ports {
		named = named || (p.Name == "http" && int64(p.ContainerPort) == port)
	}
	if !named {
		t.Errorf("%s: no port named http on %d", where, port)
	}
	if a := g.Spec.Template.Annotations; a["prometheus.io/port"] != strconv.FormatInt(port, 10) {
		t.Errorf("%s: prometheus.io/port %q, want %d", where, a["prometheus.io/port"], port)
	}
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "http" {
			t.Errorf("%s: want liveness and readiness probes on GET /healthz, port http", where)
		}
	}
	secrets := map[string]bool{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			secrets[e.Name] = true
		} else if e.Name == "LIVEKIT_API_SECRET" || e.Name == "LIVEKIT_API_KEY" {
			t.Errorf("%s: %s is not read from a Secret", where, e.Name)
		}
	}
	if !secrets["LIVEKIT_API_KEY"] || !secrets["LIVEKIT_API_SECRET"] {
		t.Errorf("%s: want LIVEKIT_API_KEY and LIVEKIT_API_SECRET from the Secret", where)
	}
	sel, err := metav1.LabelSelectorAsSelector(g.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(g.Spec.Template.Labels)) {
		t.Fatalf("%s: selector %v does not match its own pods: %v", where, g.Spec.Selector, err)
	}
	for _, w := range ws {
		ws, err := metav1.LabelSelectorAsSelector(w.d.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		if sel.Matches(labels.Set(w.d.Spec.Template.Labels)) || ws.Matches(labels.Set(g.Spec.Template.Labels)) {
			t.Errorf("%s and %s select each other's pods", where, w.where)
		}
	}
	checkLabels(t, where, g.Labels)
}

// TestKEDAFromZero: the from-zero ScaledObject scales the staging pool
// between 0 and its HPA's maximum with the HPA's behaviour, on the calls
// (as keda-scaledobjects.yaml) and on the guard's unserved gauge for
// staging, active above 0.
func TestKEDAFromZero(t *testing.T) {
	m := load(t)
	ws := workers(t, m)
	var found int
	for _, so := range m.scaledObjects {
		if so.Metadata.Labels[fromZeroLabel] != "true" {
			continue
		}
		found++
		where := m.where(so)
		w, ok := workerNamed(ws, so.Spec.ScaleTargetRef.Name)
		if !ok {
			t.Errorf("%s: scaleTargetRef %q names no Deployment", where, so.Spec.ScaleTargetRef.Name)
			continue
		}
		if w.deployment == "" {
			t.Errorf("%s: scales production from zero: keep production warm", where)
		}
		var h *autoscalingv2.HorizontalPodAutoscaler
		for _, x := range m.hpas {
			if x.Spec.ScaleTargetRef.Name == w.d.Name {
				h = x
			}
		}
		if h == nil {
			t.Fatalf("%s: no HPA of %s to compare with", where, w.d.Name)
		}
		if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount != 0 {
			t.Errorf("%s: minReplicaCount must be 0", where)
		}
		if so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount != h.Spec.MaxReplicas {
			t.Errorf("%s: maxReplicaCount differs from %s's", where, m.where(h))
		}
		var behavior *autoscalingv2.HorizontalPodAutoscalerBehavior
		if a := so.Spec.Advanced; a != nil && a.HorizontalPodAutoscalerConfig != nil {
			behavior = a.HorizontalPodAutoscalerConfig.Behavior
		}
		checkScaleDown(t, where, behavior)
		if !reflect.DeepEqual(behavior, h.Spec.Behavior) {
			t.Errorf("%s: behavior differs from %s's", where, m.where(h))
		}
		if so.Spec.CooldownPeriod == nil || *so.Spec.CooldownPeriod < minScaleDownWindow {
			t.Errorf("%s: cooldownPeriod must be at least %d s: calls last minutes", where, minScaleDownWindow)
		}
		var calls, unserved bool
		for _, tr := range so.Spec.Triggers {
			q := tr.Metadata["query"]
			if tr.Type != "prometheus" {
				t.Errorf("%s: trigger %s: want prometheus", where, tr.Type)
				continue
			}
			if err := balanced(q); err != nil {
				t.Errorf("%s: query: %v", where, err)
			}
			for _, sel := range []string{fmt.Sprintf("agent_name=%q", w.flags.agentName), fmt.Sprintf("deployment=%q", w.deployment)} {
				if n, want := strings.Count(q, sel), strings.Count(q, "lkagent_"); n != want {
					t.Errorf("%s: query %q selects %s in %d of its %d series", where, q, sel, n, want)
				}
			}
			threshold, err := strconv.ParseFloat(tr.Metadata["threshold"], 64)
			if err != nil || threshold <= 0 {
				t.Errorf("%s: threshold %q: want a positive number", where, tr.Metadata["threshold"])
			}
			switch {
			case strings.Contains(q, unservedGauge+"{"):
				unserved = true
				if a, err := strconv.ParseFloat(tr.Metadata["activationThreshold"], 64); err != nil || a != 0 {
					t.Errorf("%s: the %s trigger must activate above 0 (activationThreshold: \"0\")", where, unservedGauge)
				}
				if !strings.Contains(q, "or vector(0)") {
					t.Errorf("%s: %s has no series until the guard saw a dispatch of the key: add `or vector(0)`", where, unservedGauge)
				}
			case strings.Contains(q, "lkagent_jobs_running{") && strings.Contains(q, "lkagent_jobs_queued{"):
				calls = true
				for _, ms := range h.Spec.Metrics {
					if ms.Pods != nil && ms.Pods.Target.AverageValue != nil {
						want := ms.Pods.Target.AverageValue.AsApproximateFloat64() * float64(w.flags.maxJobs)
						if math.Abs(threshold-want) > 1e-9 {
							t.Errorf("%s: threshold %v calls per pod, want %v", where, threshold, want)
						}
					}
				}
			default:
				t.Errorf("%s: query %q reads neither the calls nor %s", where, q, unservedGauge)
			}
		}
		if !calls || !unserved {
			t.Errorf("%s: want a trigger on the calls and one on %s", where, unservedGauge)
		}
		if len(m.guards) == 0 {
			t.Errorf("%s: no guard Deployment exports %s", where, unservedGauge)
		}
	}
	if found != 1 {
		t.Fatalf("%d ScaledObjects labelled %s, want 1", found, fromZeroLabel)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if strings.TrimSpace(x) == s {
			return true
		}
	}
	return false
}
