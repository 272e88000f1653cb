package broker

import (
	"crypto/tls"

	"github.com/mochi-mqtt/server/v2/packets"
)

// EndRevokedSessions disconnects every client whose account is gone or
// disabled, or whose certificate Options.PeerCheck now refuses (revoked).
// The edge calls it after the accounts file or the CRL changed. A v5
// client gets DISCONNECT 0x87 (not authorized) first. It returns how many
// sessions it ended.
func (b *Broker) EndRevokedSessions() int {
	n := 0
	for _, cl := range b.server.Clients.GetAll() {
		if cl.Net.Inline || cl.Closed() || len(cl.Properties.Username) == 0 {
			continue
		}
		user := string(cl.Properties.Username)
		reason := ""
		if _, ok := b.opts.Accounts.Lookup(user); !ok {
			reason = "account deleted or disabled"
		} else if b.opts.PeerCheck != nil {
			if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
				if err := b.opts.PeerCheck(tc.ConnectionState()); err != nil {
					reason = err.Error()
				}
			}
		}
		if reason == "" {
			continue
		}
		b.log.Warn("mqtt session ended", "user", user, "remote", cl.Net.Remote, "reason", reason)
		b.metrics.sessionsEnded.Inc()
		_ = b.server.DisconnectClient(cl, packets.ErrNotAuthorized)
		n++
	}
	return n
}
