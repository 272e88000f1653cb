package broker

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
)

// hook is the broker's only mochi hook: login, ACL and the ingest path.
type hook struct {
	mqtt.HookBase
	b *Broker

	mu       sync.Mutex
	inflight map[*mqtt.Client]chan struct{} // per-client window of writes being committed
}

func (h *hook) ID() string { return "iotkv" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnDisconnect, mqtt.OnPacketEncode, mqtt.OnSubscribed}, []byte{b})
}

// OnPacketEncode advertises the maximum packet size in a v5 CONNACK,
// which mochi does not do: without it a client cannot know the limit, and
// a packet above it only gets the connection closed (mochi sends no
// DISCONNECT 0x95), so the client would send the same batch again on every
// reconnect.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.Properties.MaximumPacketSize == 0 {
		pk.Properties.MaximumPacketSize = h.b.opts.MaxPacketSize
	}
	return pk
}

// OnConnect caps the keepalive (0 would disable mochi's read deadline) and
// namespaces the client id by username: without it, one account could take
// over another's session by reusing its client id.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	maxKA := h.b.opts.MaxKeepalive
	if cl.State.Keepalive == 0 || cl.State.Keepalive > maxKA {
		cl.State.Keepalive = maxKA
		cl.State.ServerKeepalive = true
	}
	return nil
}

func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	addr := remoteHost(cl.Net.Remote)
	log := h.b.log.With("user", user, "remote", cl.Net.Remote)
	cn := ""
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		cn = certs.PeerCN(cs)
		if h.b.opts.PeerCheck != nil {
			if err := h.b.opts.PeerCheck(cs); err != nil {
				h.b.metrics.authFailures.WithLabelValues("mqtt", "revoked").Inc()
				log.Warn("mqtt login refused", "err", err)
				return false
			}
		}
	}
	if cn == "" || cn != user {
		h.b.metrics.authFailures.WithLabelValues("mqtt", "cn_mismatch").Inc()
		log.Warn("mqtt login refused: certificate CN does not match username", "cn", cn)
		return false
	}
	if wait := h.b.opts.Throttle.Wait(user, addr); wait > 0 {
		h.b.metrics.authFailures.WithLabelValues("mqtt", "throttled").Inc()
		log.Warn("mqtt login refused: too many failures", "retry_after", wait)
		return false
	}
	ctx, cancel := authContext()
	defer cancel()
	acct, _, err := h.b.opts.Accounts.Verify(ctx, user, string(pk.Connect.Password))
	if err != nil && !errors.Is(err, accounts.ErrBadCredentials) {
		// No bcrypt worker in time (a storm): refused, but not counted
		// against the device, which retries with backoff.
		h.b.metrics.authFailures.WithLabelValues("mqtt", "busy").Inc()
		log.Warn("mqtt login refused: password check queue is full", "err", err)
		return false
	}
	if err != nil {
		wait := h.b.opts.Throttle.Fail(user, addr)
		h.b.metrics.authFailures.WithLabelValues("mqtt", "bad_password").Inc()
		log.Warn("mqtt login refused: bad username or password", "throttle", wait)
		return false
	}
	h.b.opts.Throttle.Success(user, addr)
	if h.b.opts.EdgeLink && acct.Role != iotkv.RoleEdge {
		h.b.metrics.authFailures.WithLabelValues("mqtt", "role").Inc()
		log.Warn("mqtt login refused: only edges log in here", "role", acct.Role)
		return false
	}
	cl.ID = user + "|" + cl.ID
	log.Debug("mqtt login", "role", acct.Role)
	return true
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.mu.Lock()
	delete(h.inflight, cl)
	h.mu.Unlock()
	if s := h.b.opts.Sessions; s != nil && !cl.Net.Inline {
		s.Gone(string(cl.Properties.Username), cl.Net.Remote)
	}
}

// OnSubscribed tells the session hook an edge is listening for requests.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if s := h.b.opts.Sessions; s != nil && !cl.Net.Inline {
		for i, f := range pk.Filters {
			if i < len(codes) && codes[i] < 0x80 && f.Filter == iotkv.BackupTopic(string(cl.Properties.Username), iotkv.BackupKindRequest) {
				s.Subscribed(string(cl.Properties.Username), cl.Net.Remote)
			}
		}
	}
}

// OnACLCheck: a device publishes and subscribes only under its own
// namespace and never publishes to its status/ topics; only role master
// touches iotkv/v1/backup/; admin may subscribe under iotkv/v1/devices/.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	user := string(cl.Properties.Username)
	acct, ok := h.b.opts.Accounts.Lookup(user)
	allowed := ok && allow(acct.Role, user, topic, write)
	if h.b.opts.EdgeLink {
		allowed = ok && acct.Role == iotkv.RoleEdge && allowEdge(user, topic, write)
		if !allowed && h.b.opts.Sessions != nil {
			h.b.opts.Sessions.Refused(user, topic)
		}
	}
	if !allowed {
		h.b.metrics.aclDenied.Inc()
		h.b.log.Warn("mqtt acl denied", "user", user, "topic", redactTopic(topic), "write", write)
	}
	return allowed
}

func allow(role iotkv.Role, user, topic string, write bool) bool {
	switch role {
	case iotkv.RoleDevice:
		ns := iotkv.DeviceNamespace(user)
		rest, ok := strings.CutPrefix(topic, ns)
		if !ok {
			return false
		}
		if write {
			return rest != "" && !strings.HasPrefix(rest, "status/") && rest != "status"
		}
		return true
	case iotkv.RoleMaster:
		return strings.HasPrefix(topic, iotkv.BackupPrefix)
	case iotkv.RoleAdmin:
		// Watch every device; the backup stream is the master's alone.
		return !write && strings.HasPrefix(topic, iotkv.DevicesPrefix)
	}
	return false
}

// allowEdge: an edge that dials out publishes its own stream and reads
// its own requests and confirms, nothing else.
func allowEdge(user, topic string, write bool) bool {
	edge, kind, ok := iotkv.ParseBackupTopic(topic)
	if !ok || edge != user {
		return false
	}
	if write {
		return kind == iotkv.BackupKindHello || kind == iotkv.BackupKindChanges || kind == iotkv.BackupKindSnapshot
	}
	return kind == iotkv.BackupKindRequest || kind == iotkv.BackupKindConfirm
}

// OnPublish sends device writes to the ingest. For QoS 1 it returns at once
// and the ingest's done callback writes the PUBACK after the commit, so a
// client keeps a window of publishes in flight instead of one per fsync.
// QoS 0 and 2 wait for the commit here (QoS 2's PUBREC then follows from
// mochi).
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if h.b.opts.EdgeLink {
		pk.FixedHeader.Retain = false // the ACL allowed it: the backup stream, never retained
		return pk, nil
	}
	user := string(cl.Properties.Username)
	t, ok := iotkv.ParseDeviceTopic(pk.TopicName)
	if !ok || t.Device != user || (t.Kind != iotkv.TopicBatch && t.Kind != iotkv.TopicKV) {
		// Only the edge retains (status/ack): a client's retained
		// messages would be kept in memory without bound.
		pk.FixedHeader.Retain = false
		return pk, nil
	}
	if h.b.closing.Load() {
		return pk, packets.ErrRejectPacket // no PUBACK: sent again after reconnect
	}
	// The window is made at the first publish, not at login: mochi does
	// not call OnDisconnect for a client that fails between login and
	// CONNACK, but always does once publishes have been read.
	h.mu.Lock()
	window := h.inflight[cl]
	if window == nil {
		if h.inflight == nil {
			h.inflight = make(map[*mqtt.Client]chan struct{})
		}
		window = make(chan struct{}, h.b.opts.InflightPerClient)
		h.inflight[cl] = window
	}
	h.mu.Unlock()
	window <- struct{}{} // back-pressure: this client's reads wait
	w := Write{Device: user, Topic: t, Payload: pk.Payload, Retain: pk.FixedHeader.Retain}
	h.b.metrics.messages.WithLabelValues(t.Kind).Inc()

	if pk.FixedHeader.Qos == 1 {
		// The answer may come a while later (a refusal is held until the
		// device has tokens again): it keeps what it needs, not the payload.
		answer := packets.Packet{PacketID: pk.PacketID, TopicName: pk.TopicName}
		h.b.opts.Ingest.Submit(w, func(r Result) {
			defer func() { <-window }()
			h.finishQoS1(cl, answer, r)
		})
		return pk, packets.ErrRejectPacket // we own the PUBACK
	}
	done := make(chan Result, 1)
	h.b.opts.Ingest.Submit(w, func(r Result) { done <- r })
	r := <-done
	<-window
	if r.Err == nil {
		return pk, packets.CodeSuccessIgnore
	}
	h.refused(cl, pk, r)
	var ie *iotkv.Error
	if cl.Properties.ProtocolVersion == 5 && errors.As(r.Err, &ie) {
		return pk, reasonCode(ie.Code)
	}
	if errors.As(r.Err, &ie) {
		return pk, packets.CodeSuccessIgnore
	}
	return pk, packets.ErrRejectPacket
}

func (h *hook) finishQoS1(cl *mqtt.Client, pk packets.Packet, r Result) {
	var ie *iotkv.Error
	code := packets.CodeSuccess
	switch {
	case r.Err == nil:
	case errors.As(r.Err, &ie):
		h.refused(cl, pk, r)
		if cl.Properties.ProtocolVersion == 5 {
			code = reasonCode(ie.Code)
		}
	default:
		// Not durable: no PUBACK. Drop the connection so the client
		// resends on reconnect instead of waiting for a PUBACK forever.
		h.b.log.Error("write not durable; disconnecting client so it resends", "client", cl.ID, "err", r.Err)
		h.b.server.DisconnectClient(cl, packets.ErrServerUnavailable)
		return
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    pk.PacketID,
		ReasonCode:  code.Code,
	}
	if code.Code >= packets.ErrUnspecifiedError.Code {
		ack.Properties.ReasonString = code.Reason
	}
	if err := cl.WritePacket(ack); err != nil {
		h.b.log.Debug("puback not written", "client", cl.ID, "err", err)
	}
}

// refused counts and logs a refusal and, for every protocol version, tells
// the device on its status/error topic.
func (h *hook) refused(cl *mqtt.Client, pk packets.Packet, r Result) {
	code := iotkv.CodeOf(r.Err)
	h.b.metrics.rejects.WithLabelValues(code).Inc()
	user := string(cl.Properties.Username)
	// The reason's text names keys, which stay out of logs: the device
	// gets it on status/error, the log gets the code.
	h.b.log.Warn("device write refused", "device", user, "topic", redactTopic(pk.TopicName), "seq", r.Seq, "code", code)
	msg, _ := json.Marshal(iotkv.ErrorMessage{Seq: r.Seq, Code: code, Message: r.Err.Error()})
	// QoS 1: a device drops a refused batch only on this message, and a
	// later status/ack would otherwise count it as applied. mochi drops
	// QoS 0 messages for a client whose outbound buffer is full.
	if err := h.b.Publish(iotkv.ErrorTopic(user), msg, 1); err != nil {
		h.b.log.Warn("status/error not published", "device", user, "err", err)
	}
}

// redactTopic keeps keys (the kv topic's tail) and oversized names out of
// logs.
func redactTopic(topic string) string {
	if t, ok := iotkv.ParseDeviceTopic(topic); ok && t.Kind == iotkv.TopicKV {
		return iotkv.DeviceNamespace(t.Device) + "kv/…"
	}
	if len(topic) > 128 {
		return topic[:128] + "…"
	}
	return topic
}

// reasonCode maps a refusal to a v5 PUBACK reason code.
//
// A batch over a limit gets 0x97 (quota exceeded), not 0x95. 0x95 is not
// a valid PUBACK reason code (MQTT 5 §3.4.2.1 allows 0x00 0x10 0x80 0x83
// 0x87 0x90 0x91 0x97 0x99), and MQTT.js treats it as a protocol error and
// drops the connection, so the batch would be sent again forever. A packet above the maximum packet size gets the
// connection closed by mochi (without the DISCONNECT 0x95 MQTT 5 asks
// for); the limit is advertised in the CONNACK (OnPacketEncode). See
// docs/protocol.md, "Refusals".
func reasonCode(code string) packets.Code {
	switch code {
	case iotkv.CodeTooLarge:
		return packets.ErrQuotaExceeded
	case iotkv.CodeNotAuthorized:
		return packets.ErrNotAuthorized
	case iotkv.CodeRateLimited, iotkv.CodeQuotaExceeded:
		return packets.ErrQuotaExceeded
	default:
		return packets.ErrPayloadFormatInvalid
	}
}
