package kubernetes

import (
	"strings"
	"testing"
)

const validDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: x
  annotations:
    a: "true"
spec:
  selector:
    matchLabels: {app: x}
  template:
    metadata:
      labels: {app: x}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: agent
          image: x
`

// TestStrictDecodingRefuses proves the decoder refuses what the API server
// would refuse or silently drop; without it, the manifests' test could pass
// on files that do not apply.
func TestStrictDecodingRefuses(t *testing.T) {
	if _, err := decodeObject([]byte(validDeployment)); err != nil {
		t.Fatalf("a valid Deployment does not decode: %v", err)
	}
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"unknown field", "  selector:", "  replica: 2\n  selector:", `unknown field "spec.replica"`},
		{"unknown nested field", "      containers:", "      gracePeriod: 5\n      containers:", `unknown field "spec.template.spec.gracePeriod"`},
		{"wrong type", "terminationGracePeriodSeconds: 30", `terminationGracePeriodSeconds: "30"`, "cannot unmarshal string"},
		{"number for a string", "image: x", "image: 5", "cannot unmarshal number"},
		{"boolean annotation", `a: "true"`, "a: true", "cannot unmarshal bool"},
		{"field name in the wrong case", "  selector:", "  Replicas: 2\n  selector:", `unknown field "spec.Replicas"`},
		{"duplicate key", "  name: x", "  name: x\n  name: y", "already set"},
		{"unknown kind", "kind: Deployment", "kind: Deploymnet", "no decoder"},
		{"a Secret", "apiVersion: apps/v1\nkind: Deployment", "apiVersion: v1\nkind: Secret", "does not belong"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			broken := strings.Replace(validDeployment, tc.old, tc.new, 1)
			if broken == validDeployment {
				t.Fatalf("%q not found in the valid Deployment", tc.old)
			}
			_, err := decodeObject([]byte(broken))
			if err == nil {
				t.Fatalf("decoded without error:\n%s", broken)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}

	// The minimal structs of custom resources are as strict.
	so := `apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: x}
spec:
  scaleTargetRef: {name: x}
  idleReplicaCount: 0
  triggers: []
`
	if _, err := decodeObject([]byte(so)); err == nil || !strings.Contains(err.Error(), `unknown field "spec.idleReplicaCount"`) {
		t.Errorf("a ScaledObject field the struct does not name: err = %v", err)
	}
	var v adapterValues
	if err := decodeStrict([]byte("rules:\n  custom:\n    - seriesQuery: x\n      metricQuery: y\n"), &v); err == nil {
		t.Errorf("a misspelt adapter rule field decoded")
	}
}

func TestSplitDocuments(t *testing.T) {
	in := "# head\n---\na: 1\n--- # two\nb: 2\n---\n# only a comment\n---   \nc: 3\n"
	docs := splitDocuments("f.yaml", []byte(in))
	if len(docs) != 3 {
		t.Fatalf("%d documents, want 3: %q", len(docs), docs)
	}
	for i, want := range []struct {
		line int
		data string
	}{{3, "a: 1\n"}, {5, "b: 2\n"}, {9, "c: 3\n"}} {
		if docs[i].line != want.line || string(docs[i].data) != want.data || docs[i].index != i+1 {
			t.Errorf("document %d: line %d %q, want line %d %q", i+1, docs[i].line, docs[i].data, want.line, want.data)
		}
	}
}
