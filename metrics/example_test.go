package metrics_test

import (
	"fmt"

	"github.com/lkagent/lkagent/metrics"
)

// A dashboard's failure rate of staging against production, built from the
// documented names.
func Example() {
	failed := fmt.Sprintf(`sum by (%s) (rate(%s{%s="support-bot", %s=~"failed|panicked"}[5m]))`,
		metrics.LabelDeployment, metrics.JobsFinished, metrics.LabelAgentName, metrics.LabelStatus)
	fmt.Println(failed)
	fmt.Printf("production is %s=%q\n", metrics.LabelDeployment, metrics.ProductionDeployment)
	// Output:
	// sum by (deployment) (rate(lkagent_jobs_finished_total{agent_name="support-bot", status=~"failed|panicked"}[5m]))
	// production is deployment="_production"
}
