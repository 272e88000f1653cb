//go:build !unix

package edge

import "github.com/prometheus/client_golang/prometheus"

// diskCollectors: no statfs on this platform.
func diskCollectors(string) []prometheus.Collector { return nil }
