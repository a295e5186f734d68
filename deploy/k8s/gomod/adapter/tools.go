//go:build tools

// Package tools pins prometheus-adapter, which serves the replicas' metrics to the HPAs.
package tools

import _ "sigs.k8s.io/prometheus-adapter/cmd/adapter"
