//go:build tools

// Package tools pins kube-state-metrics, whose Deployment and HPA series the alerts ReplicasNotReady
// and HPAAtMaximum read.
package tools

import _ "k8s.io/kube-state-metrics/v2"
