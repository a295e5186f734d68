//go:build tools

// Package tools pins the NetworkPolicy enforcer: kube-router, run with only its firewall controller.
package tools

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
