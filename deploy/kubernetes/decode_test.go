// Package kubernetes holds the Kubernetes manifests of an lkagent worker.
// It has no code: its tests decode every manifest strictly, with the real
// Kubernetes API types, and check the invariants the files must keep, so
// that they cannot rot.
//
// It is a module of its own so that Kubernetes' dependencies never enter
// the module graph of lkagent's users. Run its tests from this directory:
//
//	go test ./...
package kubernetes

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// doc is one YAML document of a file under this directory.
type doc struct {
	file  string // path relative to this directory, with forward slashes
	index int    // 1 for the file's first document
	line  int    // line the document starts on
	data  []byte
}

func (d doc) String() string {
	return fmt.Sprintf("%s:%d (document %d)", d.file, d.line, d.index)
}

// splitDocuments splits a YAML stream into its documents at the lines that
// are a document marker ("---", optionally followed by a comment). A
// document holding only blank lines and comments is dropped.
func splitDocuments(file string, data []byte) []doc {
	var (
		docs    []doc
		cur     bytes.Buffer
		start   = 1
		content bool
	)
	flush := func() {
		if content {
			docs = append(docs, doc{file: file, index: len(docs) + 1, line: start, data: bytes.Clone(cur.Bytes())})
		}
		cur.Reset()
		content = false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimRight(line, " \t\r")
		if trimmed == "---" || strings.HasPrefix(trimmed, "--- #") {
			flush()
			start = n + 1
			continue
		}
		if s := strings.TrimSpace(line); s != "" && !strings.HasPrefix(s, "#") {
			content = true
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	flush()
	return docs
}

// decodeStrict decodes one YAML document into v as strictly as the API
// server takes a manifest from kubectl (strict field validation), and
// fails on anything it would refuse or drop:
//
//   - YAML to JSON with duplicate keys refused (yaml.YAMLToJSONStrict);
//   - JSON to v with unknown fields and duplicate fields refused, field
//     names matched case-sensitively, and no type coerced
//     (sigs.k8s.io/json.UnmarshalStrict, the decoder of apimachinery).
//
// yaml.UnmarshalStrict alone would let two mistakes through: it converts a
// number or a boolean where v has a string (`prometheus.io/scrape: true`
// passes; the API server refuses it) and it matches field names regardless
// of case (`Replicas: 2` passes; the API server does not know the field).
func decodeStrict(data []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fmt.Errorf("YAML: %w", err)
	}
	return decodeJSONStrict(j, v)
}

func decodeJSONStrict(j []byte, v any) error {
	strictErrs, err := sigsjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// The kinds in this directory that Kubernetes' own API types describe are
// decoded into those types. Two are not Kubernetes' own: the Prometheus
// Operator's PodMonitor and KEDA's ScaledObject are custom resources, and
// their Go types would pull in their projects' whole module graphs. They
// are decoded into the minimal structs below, which name only the fields
// these manifests use: decoding them is as strict (a field the struct does
// not name fails), so a field added to a manifest needs adding here too.
// The same holds for the prometheus-adapter chart's values.

// podMonitor is a monitoring.coreos.com/v1 PodMonitor, the fields used.
type podMonitor struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path,omitempty"`
			Interval string `json:"interval,omitempty"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// scaledObject is a keda.sh/v1alpha1 ScaledObject, the fields used. The
// HPA behaviour it passes on is Kubernetes' own type.
type scaledObject struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion,omitempty"`
			Kind       string `json:"kind,omitempty"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount *int32 `json:"minReplicaCount,omitempty"`
		MaxReplicaCount *int32 `json:"maxReplicaCount,omitempty"`
		PollingInterval *int32 `json:"pollingInterval,omitempty"`
		CooldownPeriod  *int32 `json:"cooldownPeriod,omitempty"`
		Advanced        *struct {
			HorizontalPodAutoscalerConfig *struct {
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
			} `json:"horizontalPodAutoscalerConfig,omitempty"`
		} `json:"advanced,omitempty"`
		Triggers []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// adapterValues are Helm values of the prometheus-adapter chart, the fields
// used.
type adapterValues struct {
	Prometheus struct {
		URL  string `json:"url"`
		Port int    `json:"port"`
		Path string `json:"path,omitempty"`
	} `json:"prometheus"`
	Rules struct {
		Default bool          `json:"default"`
		Custom  []adapterRule `json:"custom"`
	} `json:"rules"`
}

// adapterRule is one discovery rule of prometheus-adapter's configuration.
type adapterRule struct {
	SeriesQuery   string `json:"seriesQuery"`
	SeriesFilters []struct {
		Is    string `json:"is,omitempty"`
		IsNot string `json:"isNot,omitempty"`
	} `json:"seriesFilters,omitempty"`
	Resources struct {
		Overrides map[string]struct {
			Group    string `json:"group,omitempty"`
			Resource string `json:"resource"`
		} `json:"overrides,omitempty"`
		Template string `json:"template,omitempty"`
	} `json:"resources"`
	Name struct {
		Matches string `json:"matches"`
		As      string `json:"as"`
	} `json:"name"`
	MetricsQuery string `json:"metricsQuery"`
}

// valuesFiles are the files that hold no Kubernetes objects but
// configuration of a tool, by path: each is one document, decoded strictly
// into its type.
var valuesFiles = map[string]func() any{
	"monitoring/prometheus-adapter-values.yaml": func() any { return new(adapterValues) },
}

// decodeObject decodes a document holding one Kubernetes object into the
// type its apiVersion and kind name.
func decodeObject(data []byte) (any, error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("YAML: %w", err)
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		return nil, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	var v any
	switch gvk := tm.APIVersion + " " + tm.Kind; gvk {
	case "apps/v1 Deployment":
		v = new(appsv1.Deployment)
	case "v1 ConfigMap":
		v = new(corev1.ConfigMap)
	case "autoscaling/v2 HorizontalPodAutoscaler":
		v = new(autoscalingv2.HorizontalPodAutoscaler)
	case "monitoring.coreos.com/v1 PodMonitor":
		v = new(podMonitor)
	case "keda.sh/v1alpha1 ScaledObject":
		v = new(scaledObject)
	case "v1 Secret":
		return nil, errors.New("a Secret does not belong in the repository: create it with kubectl (README.md)")
	case " ":
		return nil, errors.New("no apiVersion and kind")
	default:
		return nil, fmt.Errorf("%s: no decoder for this kind: add its type to decodeObject", gvk)
	}
	if err := decodeJSONStrict(j, v); err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	return v, nil
}

// manifests is everything under this directory, decoded.
type manifests struct {
	files         []string
	deployments   []*appsv1.Deployment
	guards        []*appsv1.Deployment // component dispatch-guard: lkagent guard, not a worker
	hpas          []*autoscalingv2.HorizontalPodAutoscaler
	configMaps    []*corev1.ConfigMap
	podMonitors   []*podMonitor
	scaledObjects []*scaledObject
	adapter       []*adapterValues
	origin        map[any]doc // where each decoded value comes from
}

// where names the document v was decoded from.
func (m *manifests) where(v any) string { return m.origin[v].String() }

// loadManifests decodes every .yaml and .yml file under this directory;
// its error lists every document that did not decode.
var loadManifests = sync.OnceValues(func() (*manifests, error) {
	m := &manifests{origin: map[any]doc{}}
	var errs []error
	err := filepath.WalkDir(".", func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() || (!strings.HasSuffix(path, ".yaml") && !strings.HasSuffix(path, ".yml")) {
			return nil
		}
		rel := filepath.ToSlash(path)
		m.files = append(m.files, rel)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		docs := splitDocuments(rel, data)
		if len(docs) == 0 {
			errs = append(errs, fmt.Errorf("%s: no document", rel))
			return nil
		}
		if newValues, ok := valuesFiles[rel]; ok {
			if len(docs) != 1 {
				errs = append(errs, fmt.Errorf("%s: %d documents, want 1", rel, len(docs)))
				return nil
			}
			v := newValues()
			if err := decodeStrict(docs[0].data, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", docs[0], err))
				return nil
			}
			m.origin[v] = docs[0]
			if a, ok := v.(*adapterValues); ok {
				m.adapter = append(m.adapter, a)
			}
			return nil
		}
		for _, d := range docs {
			v, err := decodeObject(d.data)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", d, err))
				continue
			}
			m.origin[v] = d
			switch o := v.(type) {
			case *appsv1.Deployment:
				if o.Labels["app.kubernetes.io/component"] == guardComponent {
					m.guards = append(m.guards, o)
					break
				}
				m.deployments = append(m.deployments, o)
			case *autoscalingv2.HorizontalPodAutoscaler:
				m.hpas = append(m.hpas, o)
			case *corev1.ConfigMap:
				m.configMaps = append(m.configMaps, o)
			case *podMonitor:
				m.podMonitors = append(m.podMonitors, o)
			case *scaledObject:
				m.scaledObjects = append(m.scaledObjects, o)
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	sort.Strings(m.files)
	return m, errors.Join(errs...)
})
