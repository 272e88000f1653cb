package broker

import (
	"fmt"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	messages     *prometheus.CounterVec
	rejects      *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	aclDenied    prometheus.Counter
	// sessionsEnded counts live sessions ended for a revoked certificate
	// or a deleted or disabled account.
	sessionsEnded prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, server *mqtt.Server) (*metrics, error) {
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iotkv_mqtt_messages_total", Help: "Device write messages received, by topic kind.",
		}, []string{"kind"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iotkv_mqtt_rejects_total", Help: "Device writes refused, by reason code.",
		}, []string{"reason"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iotkv_auth_failures_total", Help: "Failed logins, by protocol and reason.",
		}, []string{"proto", "reason"}),
		aclDenied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iotkv_mqtt_acl_denied_total", Help: "Publishes and subscriptions refused by the ACL.",
		}),
		sessionsEnded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iotkv_mqtt_sessions_ended_total", Help: "Live MQTT sessions ended because their certificate was revoked or their account deleted or disabled.",
		}),
	}
	connected := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "iotkv_mqtt_connected_clients", Help: "MQTT clients connected now.",
	}, func() float64 { return float64(atomic.LoadInt64(&server.Info.ClientsConnected)) })
	for _, c := range []prometheus.Collector{m.messages, m.rejects, m.authFailures, m.aclDenied, m.sessionsEnded, connected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("broker: register metrics: %w", err)
		}
	}
	return m, nil
}
