package kubernetes

import (
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"
	"unicode"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// What a draining worker needs after DrainTimeout and ShutdownTimeout
// (docs/operating.md, "Draining and Kubernetes"), and the least
// margin terminationGracePeriodSeconds must leave on top.
const (
	finalStatusesBudget = 5 * time.Second
	httpShutdownBudget  = 2 * time.Second
	minGraceMargin      = 5 * time.Second
)

const (
	envDeployment = "LIVEKIT_AGENT_DEPLOYMENT"
	envURL        = "LIVEKIT_URL"
	agentName     = "support-bot"
	container     = "agent" // the worker's container in each pod
	// minScaleDownWindow: calls last minutes; a shorter scale-down
	// stabilisation window removes pods on a dip between two calls.
	minScaleDownWindow = 300
)

func load(t *testing.T) *manifests {
	t.Helper()
	m, err := loadManifests()
	if err != nil {
		t.Fatalf("manifests do not decode:\n%v", err)
	}
	return m
}

// TestManifestsDecodeStrictly decodes every file and checks that the set
// is complete: two Deployments, an HPA for each, the adapter's rule.
func TestManifestsDecodeStrictly(t *testing.T) {
	m := load(t)
	t.Logf("decoded %d files: %s", len(m.files), strings.Join(m.files, ", "))
	if len(m.deployments) != 2 {
		t.Errorf("%d Deployments, want 2 (production and staging)", len(m.deployments))
	}
	if len(m.hpas) != len(m.deployments) {
		t.Errorf("%d HorizontalPodAutoscalers for %d Deployments, want one each", len(m.hpas), len(m.deployments))
	}
	if len(m.adapter) != 1 {
		t.Errorf("%d prometheus-adapter values files, want 1", len(m.adapter))
	}
	for v, d := range m.origin {
		var meta *metav1.ObjectMeta
		switch o := v.(type) {
		case *appsv1.Deployment:
			meta = &o.ObjectMeta
		case *autoscalingv2.HorizontalPodAutoscaler:
			meta = &o.ObjectMeta
		case *corev1.ConfigMap:
			meta = &o.ObjectMeta
		case *podMonitor:
			meta = &o.Metadata
		case *scaledObject:
			meta = &o.Metadata
		default:
			continue
		}
		for _, msg := range validation.IsDNS1123Subdomain(meta.Name) {
			t.Errorf("%s: name %q: %s", d, meta.Name, msg)
		}
		if meta.Namespace != "" {
			t.Errorf("%s: namespace %q is set: the manifests are applied with -n <namespace>, into one namespace", d, meta.Namespace)
		}
		checkLabels(t, d.String(), meta.Labels)
	}
}

// workerFlags are the flags the agent's binary is assumed to read
// (README.md, "The binary").
type workerFlags struct {
	agentName       string
	httpAddr        string
	maxJobs         int
	maxQueued       int
	drainTimeout    time.Duration
	shutdownTimeout time.Duration
}

// parseWorkerFlags parses a container's args as the binary's flag package
// would; every flag must be set explicitly, so that the grace period is
// computed from the values in the manifest and not from a default.
func parseWorkerFlags(args []string) (workerFlags, error) {
	var f workerFlags
	fs := flag.NewFlagSet(container, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.agentName, "agent-name", "", "")
	fs.StringVar(&f.httpAddr, "http-addr", "", "")
	fs.IntVar(&f.maxJobs, "max-jobs", 0, "")
	fs.IntVar(&f.maxQueued, "max-queued", 0, "")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 0, "")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 0, "")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("arguments after the flags: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	var missing []string
	fs.VisitAll(func(fl *flag.Flag) {
		if !set[fl.Name] {
			missing = append(missing, "--"+fl.Name)
		}
	})
	if len(missing) > 0 {
		return f, fmt.Errorf("not set: %s (set every one: the binary's defaults are not part of the manifest)", strings.Join(missing, ", "))
	}
	switch {
	case f.agentName == "":
		return f, fmt.Errorf("--agent-name is empty")
	case f.maxJobs <= 0:
		return f, fmt.Errorf("--max-jobs=%d: the autoscaling signal divides by the worker's capacity; set a cap", f.maxJobs)
	case f.maxQueued < -1:
		return f, fmt.Errorf("--max-queued=%d: must be >= -1", f.maxQueued)
	case f.drainTimeout <= 0 || f.shutdownTimeout <= 0:
		return f, fmt.Errorf("--drain-timeout and --shutdown-timeout must be positive")
	}
	return f, nil
}

// worker is a Deployment with what the tests read from it.
type worker struct {
	d          *appsv1.Deployment
	where      string
	c          *corev1.Container
	flags      workerFlags
	port       int32  // the HTTP endpoints' port, from --http-addr
	deployment string // LIVEKIT_AGENT_DEPLOYMENT; "" is production
}

func workers(t *testing.T, m *manifests) []worker {
	t.Helper()
	var ws []worker
	for _, d := range m.deployments {
		w := worker{d: d, where: m.where(d)}
		for i := range d.Spec.Template.Spec.Containers {
			if c := &d.Spec.Template.Spec.Containers[i]; c.Name == container {
				w.c = c
			}
		}
		if w.c == nil {
			t.Fatalf("%s: Deployment %s has no container %q", w.where, d.Name, container)
		}
		var err error
		if w.flags, err = parseWorkerFlags(w.c.Args); err != nil {
			t.Fatalf("%s: container %q: args: %v", w.where, container, err)
		}
		host, port, err := net.SplitHostPort(w.flags.httpAddr)
		if err != nil {
			t.Fatalf("%s: --http-addr=%q: %v", w.where, w.flags.httpAddr, err)
		}
		if host != "" && host != "0.0.0.0" && host != "::" {
			t.Errorf("%s: --http-addr=%q listens on %s only: the kubelet's probes and Prometheus could not reach it", w.where, w.flags.httpAddr, host)
		}
		p, err := strconv.ParseInt(port, 10, 32)
		if err != nil || p <= 0 {
			t.Fatalf("%s: --http-addr=%q: the port must be a number", w.where, w.flags.httpAddr)
		}
		w.port = int32(p)
		for _, e := range w.c.Env {
			if e.Name == envDeployment {
				if e.ValueFrom != nil {
					t.Errorf("%s: %s comes from %v: give it literally, the tests must see it", w.where, envDeployment, e.ValueFrom)
				}
				w.deployment = e.Value
			}
		}
		ws = append(ws, w)
	}
	return ws
}

// TestDeployments checks each Deployment: the grace period covers the
// drain, probes and scraping use the named port, secrets come from a
// Secret, the selector matches the pods.
func TestDeployments(t *testing.T) {
	m := load(t)
	for _, w := range workers(t, m) {
		t.Run(w.d.Name, func(t *testing.T) {
			spec := &w.d.Spec.Template.Spec
			if w.d.Spec.Replicas != nil {
				t.Errorf("%s: spec.replicas is set: the HPA owns the replica count, and every apply would reset it", w.where)
			}
			sel, err := metav1.LabelSelectorAsSelector(w.d.Spec.Selector)
			if err != nil || sel.Empty() {
				t.Fatalf("%s: selector %v: %v", w.where, w.d.Spec.Selector, err)
			}
			if !sel.Matches(labels.Set(w.d.Spec.Template.Labels)) {
				t.Errorf("%s: selector %s does not match the pod template's labels %v", w.where, sel, w.d.Spec.Template.Labels)
			}
			checkLabels(t, w.where+" pod template", w.d.Spec.Template.Labels)
			if w.flags.agentName != agentName {
				t.Errorf("%s: --agent-name=%q, want %q", w.where, w.flags.agentName, agentName)
			}
			if err := checkDeploymentLabel(w.deployment); err != nil {
				t.Errorf("%s: %s=%q: %v", w.where, envDeployment, w.deployment, err)
			}

			// The grace period covers the whole drain.
			need := w.flags.drainTimeout + w.flags.shutdownTimeout + finalStatusesBudget + httpShutdownBudget
			if g := spec.TerminationGracePeriodSeconds; g == nil {
				t.Errorf("%s: terminationGracePeriodSeconds is not set (Kubernetes' default, 30 s, kills draining calls)", w.where)
			} else if got := time.Duration(*g) * time.Second; got < need+minGraceMargin {
				t.Errorf("%s: terminationGracePeriodSeconds %d < DrainTimeout %v + ShutdownTimeout %v + %v final statuses + %v HTTP shutdown + %v margin = %d: the kubelet would kill the worker mid-drain",
					w.where, *g, w.flags.drainTimeout, w.flags.shutdownTimeout, finalStatusesBudget, httpShutdownBudget, minGraceMargin,
					int64((need+minGraceMargin)/time.Second))
			}

			// The HTTP endpoints: a named port, probes on it.
			portName := ""
			for _, p := range w.c.Ports {
				if p.ContainerPort == w.port {
					portName = p.Name
				}
			}
			if portName == "" {
				t.Fatalf("%s: no named container port %d for --http-addr=%s", w.where, w.port, w.flags.httpAddr)
			}
			checkProbe(t, w.where+" livenessProbe", w.c.LivenessProbe, "/healthz", w.c, w.port)
			checkProbe(t, w.where+" readinessProbe", w.c.ReadinessProbe, "/readyz", w.c, w.port)

			// Scraping by annotations, if used, on the same port.
			if a := w.d.Spec.Template.Annotations; a["prometheus.io/scrape"] != "" {
				if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != strconv.Itoa(int(w.port)) || a["prometheus.io/path"] != "/metrics" {
					t.Errorf("%s: prometheus.io annotations %v: want scrape \"true\", port %q, path /metrics", w.where, a, strconv.Itoa(int(w.port)))
				}
			}

			checkEnv(t, m, w)
		})
	}
}

// checkProbe: an HTTP GET of path on the container's named port that is
// the worker's HTTP port.
func checkProbe(t *testing.T, where string, p *corev1.Probe, path string, c *corev1.Container, port int32) {
	t.Helper()
	switch {
	case p == nil:
		t.Errorf("%s: missing", where)
		return
	case p.HTTPGet == nil:
		t.Errorf("%s: not an httpGet probe", where)
		return
	case p.HTTPGet.Path != path:
		t.Errorf("%s: path %q, want %q", where, p.HTTPGet.Path, path)
	case p.HTTPGet.Scheme != "" && p.HTTPGet.Scheme != corev1.URISchemeHTTP:
		t.Errorf("%s: scheme %s: the worker serves plain HTTP", where, p.HTTPGet.Scheme)
	}
	if p.HTTPGet.Port.Type != intstr.String {
		t.Errorf("%s: port %s is a number: name the container's port", where, p.HTTPGet.Port.String())
		return
	}
	for _, cp := range c.Ports {
		if cp.Name == p.HTTPGet.Port.StrVal {
			if cp.ContainerPort != port {
				t.Errorf("%s: port %q is %d, but the worker listens on %d", where, cp.Name, cp.ContainerPort, port)
			}
			return
		}
	}
	t.Errorf("%s: port %q is no port of container %q", where, p.HTTPGet.Port.StrVal, c.Name)
}

// secretish names environment variables that must never have a literal value.
var secretish = regexp.MustCompile(`(?i)(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)`)

// checkEnv: the API key and secret come from a Secret through
// secretKeyRef, nothing secret is literal, the URL is one the worker takes.
func checkEnv(t *testing.T, m *manifests, w worker) {
	t.Helper()
	env := map[string]corev1.EnvVar{}
	for _, e := range w.c.Env {
		if _, dup := env[e.Name]; dup {
			t.Errorf("%s: %s is set twice", w.where, e.Name)
		}
		env[e.Name] = e
		if secretish.MatchString(e.Name) && (e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			t.Errorf("%s: %s must come from a Secret through valueFrom.secretKeyRef, never a literal value", w.where, e.Name)
		}
	}
	for _, name := range []string{"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"} {
		e, ok := env[name]
		if !ok {
			t.Errorf("%s: %s is not set", w.where, name)
			continue
		}
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name == "" || e.ValueFrom.SecretKeyRef.Key == "" {
			t.Errorf("%s: %s: want valueFrom.secretKeyRef with a name and a key", w.where, name)
		} else if o := e.ValueFrom.SecretKeyRef.Optional; o != nil && *o {
			t.Errorf("%s: %s: the secretKeyRef is optional: a pod without it would start and fail", w.where, name)
		}
	}
	for _, a := range w.c.Args {
		if secretish.MatchString(strings.SplitN(a, "=", 2)[0]) {
			t.Errorf("%s: argument %q: secrets go through the environment, from a Secret", w.where, a)
		}
	}
	for _, ef := range w.c.EnvFrom {
		if ef.ConfigMapRef != nil {
			t.Errorf("%s: envFrom a ConfigMap: name the variables one by one, so the tests see them", w.where)
		}
	}

	e, ok := env[envURL]
	switch {
	case !ok:
		t.Errorf("%s: %s is not set", w.where, envURL)
	case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
		ref := e.ValueFrom.ConfigMapKeyRef
		var found bool
		for _, cm := range m.configMaps {
			if cm.Name == ref.Name {
				v, ok := cm.Data[ref.Key]
				if !ok {
					t.Errorf("%s: %s: ConfigMap %s has no key %q", w.where, envURL, ref.Name, ref.Key)
				} else if err := checkLiveKitURL(v); err != nil {
					t.Errorf("%s: ConfigMap %s key %q = %q: %v", m.where(cm), ref.Name, ref.Key, v, err)
				}
				found = true
			}
		}
		if !found {
			t.Errorf("%s: %s: no ConfigMap %s among the manifests", w.where, envURL, ref.Name)
		}
	case e.ValueFrom == nil:
		if err := checkLiveKitURL(e.Value); err != nil {
			t.Errorf("%s: %s=%q: %v", w.where, envURL, e.Value, err)
		}
	default:
		t.Errorf("%s: %s: want a value or a configMapKeyRef", w.where, envURL)
	}
}

// checkLiveKitURL applies the worker's rules for Options.URL.
func checkLiveKitURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return err
	case u.Scheme != "ws" && u.Scheme != "wss" && u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("scheme must be ws, wss, http or https")
	case u.Host == "":
		return fmt.Errorf("no host")
	case u.User != nil:
		return fmt.Errorf("must carry no user or password")
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("must carry no query or fragment")
	}
	return nil
}

// checkDeploymentLabel applies LiveKit's rules for a deployment label: at
// most 64 bytes, no '_', whitespace or control characters.
func checkDeploymentLabel(d string) error {
	if len(d) > 64 {
		return fmt.Errorf("longer than 64 bytes")
	}
	for _, r := range d {
		if r == '_' || unicode.IsSpace(r) || unicode.IsControl(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("contains %q", r)
		}
	}
	return nil
}

// checkLabels: keys and values Kubernetes accepts.
func checkLabels(t *testing.T, where string, ls map[string]string) {
	t.Helper()
	for k, v := range ls {
		for _, msg := range validation.IsQualifiedName(k) {
			t.Errorf("%s: label key %q: %s", where, k, msg)
		}
		for _, msg := range validation.IsValidLabelValue(v) {
			t.Errorf("%s: label %s value %q: %s", where, k, v, msg)
		}
	}
}

// TestStagingAndProduction: the two Deployments are one agent run under
// two deployment labels, and each selects only its own pods.
func TestStagingAndProduction(t *testing.T) {
	ws := workers(t, load(t))
	var prod, staging []worker
	for _, w := range ws {
		if w.deployment == "" {
			prod = append(prod, w)
		} else {
			staging = append(staging, w)
		}
	}
	if len(prod) != 1 || len(staging) != 1 {
		t.Fatalf("%d Deployments with an empty %s and %d with one, want 1 and 1", len(prod), envDeployment, len(staging))
	}
	p, s := prod[0], staging[0]
	if s.deployment != "staging" {
		t.Errorf("%s: %s=%q, want \"staging\"", s.where, envDeployment, s.deployment)
	}
	if p.d.Name == s.d.Name {
		t.Errorf("both Deployments are named %s", p.d.Name)
	}
	if reflect.DeepEqual(p.d.Labels, s.d.Labels) {
		t.Errorf("%s and %s have the same labels %v", p.where, s.where, p.d.Labels)
	}
	if reflect.DeepEqual(p.d.Spec.Template.Labels, s.d.Spec.Template.Labels) {
		t.Errorf("%s and %s: their pods have the same labels %v", p.where, s.where, p.d.Spec.Template.Labels)
	}
	// Neither selects the other's pods: two Deployments fighting over pods
	// would delete each other's.
	for _, pair := range [][2]worker{{p, s}, {s, p}} {
		sel, err := metav1.LabelSelectorAsSelector(pair[0].d.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		if sel.Matches(labels.Set(pair[1].d.Spec.Template.Labels)) {
			t.Errorf("%s: selector %s also matches the pods of %s", pair[0].where, sel, pair[1].d.Name)
		}
	}
	if p.flags.agentName != s.flags.agentName {
		t.Errorf("agent names differ: %q in %s, %q in %s", p.flags.agentName, p.where, s.flags.agentName, s.where)
	}
	if imageRepo(p.c.Image) != imageRepo(s.c.Image) {
		t.Errorf("images differ: %s in %s, %s in %s: staging runs the same agent (a newer tag, at most)", p.c.Image, p.where, s.c.Image, s.where)
	}
	// The pods' agent-deployment label says which deployment label they
	// register with.
	for _, w := range ws {
		want := w.deployment
		if want == "" {
			want = "production"
		}
		if got := w.d.Spec.Template.Labels["agent-deployment"]; got != want {
			t.Errorf("%s: pod label agent-deployment=%q, want %q", w.where, got, want)
		}
	}
}

// imageRepo is an image reference without its tag or digest.
func imageRepo(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// TestAutoscalers: one HPA per Deployment, on a metric the adapter serves,
// with headroom, and a scale-down slow enough for calls.
func TestAutoscalers(t *testing.T) {
	m := load(t)
	ws := workers(t, m)
	served := servedMetrics(m)
	targeted := map[string]int{}
	for _, h := range m.hpas {
		where := m.where(h)
		ref := h.Spec.ScaleTargetRef
		targeted[ref.Name]++
		w, ok := workerNamed(ws, ref.Name)
		if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || !ok {
			t.Errorf("%s: scaleTargetRef %s %s %q names no Deployment of these manifests", where, ref.APIVersion, ref.Kind, ref.Name)
			continue
		}
		if h.Labels["agent-deployment"] != w.d.Labels["agent-deployment"] {
			t.Errorf("%s: label agent-deployment=%q, but its Deployment %s has %q", where, h.Labels["agent-deployment"], w.d.Name, w.d.Labels["agent-deployment"])
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
			t.Errorf("%s: want 1 <= minReplicas <= maxReplicas (%d)", where, h.Spec.MaxReplicas)
		}
		var podsMetrics int
		for _, ms := range h.Spec.Metrics {
			if ms.Type != autoscalingv2.PodsMetricSourceType || ms.Pods == nil {
				continue
			}
			podsMetrics++
			name := ms.Pods.Metric.Name
			if !served[name] {
				t.Errorf("%s: metric %q is served by no prometheus-adapter rule (serving: %v)", where, name, served)
			}
			if sel := ms.Pods.Metric.Selector; sel != nil {
				if got, ok := sel.MatchLabels["agent_name"]; ok && got != w.flags.agentName {
					t.Errorf("%s: metric selector agent_name=%q, but the worker runs --agent-name=%s", where, got, w.flags.agentName)
				}
			}
			if target := ms.Pods.Target; target.Type != autoscalingv2.AverageValueMetricType || target.AverageValue == nil {
				t.Errorf("%s: metric %s: want an AverageValue target (the only kind a Pods metric takes)", where, name)
			} else if v := target.AverageValue.AsApproximateFloat64(); v <= 0 || v >= 1 {
				t.Errorf("%s: metric %s: target %s: want a utilisation in (0, 1), below 1 to leave slots free for a burst", where, name, target.AverageValue)
			}
		}
		if podsMetrics == 0 {
			t.Errorf("%s: no Pods metric: scale on the worker's own gauges", where)
		}
		checkScaleDown(t, where, h.Spec.Behavior)
	}
	for _, w := range ws {
		if targeted[w.d.Name] != 1 {
			t.Errorf("%s: %d HorizontalPodAutoscalers target Deployment %s, want 1", w.where, targeted[w.d.Name], w.d.Name)
		}
	}
}

func checkScaleDown(t *testing.T, where string, b *autoscalingv2.HorizontalPodAutoscalerBehavior) {
	t.Helper()
	if b == nil || b.ScaleDown == nil || b.ScaleDown.StabilizationWindowSeconds == nil {
		t.Errorf("%s: behavior.scaleDown.stabilizationWindowSeconds is not set", where)
		return
	}
	if w := *b.ScaleDown.StabilizationWindowSeconds; w < minScaleDownWindow {
		t.Errorf("%s: scale-down stabilisation window %d s < %d s: calls last minutes", where, w, minScaleDownWindow)
	}
	if len(b.ScaleDown.Policies) == 0 {
		t.Errorf("%s: no scale-down policy: the HPA could remove every surplus pod at once", where)
	}
}

func workerNamed(ws []worker, name string) (worker, bool) {
	for _, w := range ws {
		if w.d.Name == name {
			return w, true
		}
	}
	return worker{}, false
}

// servedMetrics are the custom metric names the adapter's rules serve.
func servedMetrics(m *manifests) map[string]bool {
	names := map[string]bool{}
	for _, a := range m.adapter {
		for _, r := range a.Rules.Custom {
			names[r.Name.As] = true
		}
	}
	return names
}

// adapterQuery is the data prometheus-adapter executes a metricsQuery
// template with.
type adapterQuery struct {
	Series            string
	LabelMatchers     string
	LabelValuesByName map[string][]string
	GroupBy           string
	GroupBySlice      []string
}

// TestPrometheusAdapterRule: the rule discovers the gauges, maps the
// scrape's labels to pods, and its query renders to utilisation per pod.
func TestPrometheusAdapterRule(t *testing.T) {
	m := load(t)
	for _, a := range m.adapter {
		where := m.where(a)
		if u, err := url.Parse(a.Prometheus.URL); err != nil || u.Host == "" {
			t.Errorf("%s: prometheus.url %q is not a URL", where, a.Prometheus.URL)
		}
		if len(a.Rules.Custom) == 0 {
			t.Errorf("%s: no rules.custom", where)
		}
		for i, r := range a.Rules.Custom {
			where := fmt.Sprintf("%s rules.custom[%d]", where, i)
			series, _, _ := strings.Cut(r.SeriesQuery, "{")
			re, err := regexp.Compile(r.Name.Matches)
			switch {
			case err != nil:
				t.Errorf("%s: name.matches: %v", where, err)
			case !re.MatchString(series):
				t.Errorf("%s: name.matches %q does not match the series %q", where, r.Name.Matches, series)
			}
			if r.Name.As == "" {
				t.Errorf("%s: name.as is empty", where)
			}
			for label, res := range map[string]string{"namespace": "namespace", "pod": "pod"} {
				if o, ok := r.Resources.Overrides[label]; !ok || o.Resource != res {
					t.Errorf("%s: resources.overrides must map the label %s to the resource %s (a Pods metric is per pod)", where, label, res)
				}
			}
			tmpl, err := template.New("metricsQuery").Delims("<<", ">>").Option("missingkey=error").Parse(r.MetricsQuery)
			if err != nil {
				t.Errorf("%s: metricsQuery: %v", where, err)
				continue
			}
			var q strings.Builder
			err = tmpl.Execute(&q, adapterQuery{
				Series:            series,
				LabelMatchers:     `namespace="agents",pod=~"support-bot-a|support-bot-b",agent_name="support-bot"`,
				LabelValuesByName: map[string][]string{"pod": {"support-bot-a", "support-bot-b"}},
				GroupBy:           "pod",
				GroupBySlice:      []string{"pod"},
			})
			if err != nil {
				t.Errorf("%s: metricsQuery: %v", where, err)
				continue
			}
			if err := balanced(q.String()); err != nil {
				t.Errorf("%s: metricsQuery renders to %q: %v", where, q.String(), err)
			}
			for _, g := range []string{"lkagent_jobs_running", "lkagent_jobs_queued", "lkagent_capacity"} {
				if !strings.Contains(q.String(), g+"{") {
					t.Errorf("%s: metricsQuery does not read %s", where, g)
				}
			}
			if !strings.Contains(q.String(), `pod=~"support-bot-a|support-bot-b"`) || !strings.Contains(q.String(), "by (pod)") {
				t.Errorf("%s: metricsQuery must select with <<.LabelMatchers>> and group by <<.GroupBy>>: renders to %q", where, q.String())
			}
		}
	}
}

// balanced reports unbalanced brackets and unterminated strings in a query.
func balanced(q string) error {
	var stack []rune
	pairs := map[rune]rune{')': '(', '}': '{', ']': '['}
	inString := false
	for _, r := range q {
		switch {
		case r == '"':
			inString = !inString
		case inString:
		case r == '(' || r == '{' || r == '[':
			stack = append(stack, r)
		case pairs[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[r] {
				return fmt.Errorf("unbalanced %q", r)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if inString {
		return fmt.Errorf("unterminated string")
	}
	if len(stack) > 0 {
		return fmt.Errorf("unclosed %q", stack[len(stack)-1])
	}
	return nil
}

// TestPodMonitor: it selects the pods of every Deployment and scrapes the
// worker's named port.
func TestPodMonitor(t *testing.T) {
	m := load(t)
	ws := workers(t, m)
	for _, pm := range m.podMonitors {
		where := m.where(pm)
		sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Errorf("%s: selector %v: %v", where, pm.Spec.Selector, err)
			continue
		}
		if len(pm.Spec.PodMetricsEndpoints) == 0 {
			t.Errorf("%s: no podMetricsEndpoints", where)
		}
		for _, w := range ws {
			if !sel.Matches(labels.Set(w.d.Spec.Template.Labels)) {
				t.Errorf("%s: selector %s misses the pods of %s", where, sel, w.d.Name)
			}
			for _, ep := range pm.Spec.PodMetricsEndpoints {
				if ep.Path != "" && ep.Path != "/metrics" {
					t.Errorf("%s: path %q, want /metrics", where, ep.Path)
				}
				var ok bool
				for _, p := range w.c.Ports {
					ok = ok || (p.Name == ep.Port && p.ContainerPort == w.port)
				}
				if !ok {
					t.Errorf("%s: port %q is not the named port of %s's HTTP endpoints (%d)", where, ep.Port, w.d.Name, w.port)
				}
			}
		}
	}
}

// TestKEDAAlternative: the optional ScaledObjects target the Deployments,
// query their own deployment label, and keep the HPAs' target, bounds and
// behaviour.
func TestKEDAAlternative(t *testing.T) {
	m := load(t)
	ws := workers(t, m)
	for _, so := range m.scaledObjects {
		if so.Metadata.Labels[fromZeroLabel] == "true" {
			continue // TestKEDAFromZero
		}
		where := m.where(so)
		ref := so.Spec.ScaleTargetRef
		w, ok := workerNamed(ws, ref.Name)
		if !ok || (ref.Kind != "" && ref.Kind != "Deployment") || (ref.APIVersion != "" && ref.APIVersion != "apps/v1") {
			t.Errorf("%s: scaleTargetRef %q names no Deployment of these manifests", where, ref.Name)
			continue
		}
		var h *autoscalingv2.HorizontalPodAutoscaler
		for _, x := range m.hpas {
			if x.Spec.ScaleTargetRef.Name == ref.Name {
				h = x
			}
		}
		if h == nil {
			t.Errorf("%s: no HPA for %s to compare with", where, ref.Name)
			continue
		}
		if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount != *h.Spec.MinReplicas ||
			so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount != h.Spec.MaxReplicas {
			t.Errorf("%s: replica bounds differ from %s's", where, m.where(h))
		}
		var behavior *autoscalingv2.HorizontalPodAutoscalerBehavior
		if a := so.Spec.Advanced; a != nil && a.HorizontalPodAutoscalerConfig != nil {
			behavior = a.HorizontalPodAutoscalerConfig.Behavior
		}
		checkScaleDown(t, where, behavior)
		if !reflect.DeepEqual(behavior, h.Spec.Behavior) {
			t.Errorf("%s: behavior differs from %s's", where, m.where(h))
		}
		if len(so.Spec.Triggers) != 1 || so.Spec.Triggers[0].Type != "prometheus" {
			t.Errorf("%s: want one prometheus trigger", where)
			continue
		}
		md := so.Spec.Triggers[0].Metadata
		if u, err := url.Parse(md["serverAddress"]); err != nil || u.Host == "" {
			t.Errorf("%s: serverAddress %q is not a URL", where, md["serverAddress"])
		}
		q := md["query"]
		if err := balanced(q); err != nil {
			t.Errorf("%s: query: %v", where, err)
		}
		for _, g := range []string{"lkagent_jobs_running{", "lkagent_jobs_queued{"} {
			if !strings.Contains(q, g) {
				t.Errorf("%s: query does not read %s}", where, g)
			}
		}
		// The worker labels production (deployment "") "_production".
		label := w.deployment
		if label == "" {
			label = "_production"
		}
		for _, sel := range []string{fmt.Sprintf("agent_name=%q", w.flags.agentName), fmt.Sprintf("deployment=%q", label)} {
			if n, want := strings.Count(q, sel), strings.Count(q, "lkagent_"); n != want {
				t.Errorf("%s: query selects %s in %d of its %d series: it must count the calls of %s only", where, sel, n, want, w.d.Name)
			}
		}
		threshold, err := strconv.ParseFloat(md["threshold"], 64)
		if err != nil {
			t.Errorf("%s: threshold %q: %v", where, md["threshold"], err)
			continue
		}
		for _, ms := range h.Spec.Metrics {
			if ms.Pods == nil || ms.Pods.Target.AverageValue == nil {
				continue
			}
			want := ms.Pods.Target.AverageValue.AsApproximateFloat64() * float64(w.flags.maxJobs)
			if math.Abs(threshold-want) > 1e-9 {
				t.Errorf("%s: threshold %v calls per pod, want %v: the HPA's target %s times --max-jobs=%d",
					where, threshold, want, ms.Pods.Target.AverageValue, w.flags.maxJobs)
			}
		}
	}
}

// TestREADME: the README names every file and creates the Secret the
// Deployments read.
func TestREADME(t *testing.T) {
	m := load(t)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range m.files {
		if !strings.Contains(string(readme), f) {
			t.Errorf("README.md does not mention %s", f)
		}
	}
	missing := map[string]bool{}
	for _, w := range workers(t, m) {
		for _, e := range w.c.Env {
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				continue
			}
			ref := e.ValueFrom.SecretKeyRef
			for _, s := range []string{"create secret generic " + ref.Name, "--from-literal=" + ref.Key + "="} {
				if !strings.Contains(string(readme), s) && !missing[s] {
					missing[s] = true
					t.Errorf("README.md: %q missing: it must create the Secret %s with the key %s that %s reads", s, ref.Name, ref.Key, w.where)
				}
			}
		}
	}
}
