package device

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The MQTT 3.1.1 client the device needs, and nothing more: one TLS
// connection with a clean session, SUBSCRIBE at QoS 1, PUBLISH at QoS 1
// whose PUBACK is not waited for (only the edge's retained status/ack
// proves delivery, see doc.go), PUBACKs for what the edge sends at QoS 1,
// and keepalive pings. It replaces paho.mqtt.golang here (see "Size" in
// doc.go): paho links WebSockets, proxies and net/http, and runs about ten
// goroutines per connection; this runs two.

// MQTT 3.1.1 control packet types (the high nibble of the fixed header).
const (
	mqttConnect     = 1
	mqttConnack     = 2
	mqttPublish     = 3
	mqttPuback      = 4
	mqttSubscribe   = 8
	mqttSuback      = 9
	mqttUnsuback    = 11
	mqttPingreq     = 12
	mqttPingresp    = 13
	mqttDisconnect  = 14
	mqttMaxInPacket = 1 << 20 // the edge sends us small status messages only
)

// errDisconnected: the session was closed by its owner.
var errDisconnected = errors.New("mqtt: disconnected")

// mqttOptions configure a session.
type mqttOptions struct {
	addr                         string
	tls                          *tls.Config
	clientID, username, password string
	keepAlive                    time.Duration
	// timeout bounds the dial and handshake, CONNECT → CONNACK,
	// SUBSCRIBE → SUBACK, each write, and the wait for an answer to a
	// ping.
	timeout   time.Duration
	subscribe []string // topic filters, all at QoS 1
	// onMessage gets every PUBLISH from the edge in arrival order, from
	// the session's reader goroutine: it must not block, and must not
	// keep payload (the buffer is reused).
	onMessage func(topic string, payload []byte)
	// onLost is called once when the connection fails; not after
	// disconnect.
	onLost func(error)
}

// mqttSession is one connected, subscribed session.
type mqttSession struct {
	o    mqttOptions
	conn net.Conn
	br   *bufio.Reader

	wmu       sync.Mutex // serialises writes and guards what follows
	wbuf      []byte
	nextID    uint16
	lastWrite time.Time

	closing   atomic.Bool // disconnect was called
	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
}

// dialMQTT connects, logs in and subscribes. ctx cancels the attempt.
// Nothing more is read until start.
func dialMQTT(ctx context.Context, o mqttOptions) (*mqttSession, error) {
	for _, s := range append([]string{o.clientID, o.username, o.password}, o.subscribe...) {
		if len(s) > 0xffff {
			return nil, errors.New("mqtt: a string is longer than 65535 bytes")
		}
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: o.timeout}, Config: o.tls}
	conn, err := d.DialContext(ctx, "tcp", o.addr)
	if err != nil {
		return nil, err
	}
	s := &mqttSession{o: o, conn: conn, br: bufio.NewReaderSize(conn, 512), done: make(chan struct{})}
	s.o.onLost = nil // a failed handshake is the dial's error
	if err := s.handshake(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	s.o.onLost = o.onLost
	return s, nil
}

// start runs the session's reader (which calls onMessage and onLost) and
// its pings. The caller knows the session before any callback about it.
func (s *mqttSession) start() {
	s.wg.Add(1)
	go s.readLoop()
	if s.o.keepAlive > 0 {
		s.wg.Add(1)
		go s.keepAliveLoop()
	}
}

// handshake sends CONNECT and SUBSCRIBE and waits for their answers.
func (s *mqttSession) handshake(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = s.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(step string, err error) error {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("%s: %w", step, err)
	}
	if err := s.conn.SetDeadline(time.Now().Add(s.o.timeout)); err != nil {
		return fail("mqtt login", err)
	}
	keepAlive := uint16(min(s.o.keepAlive.Seconds(), 0xffff))
	if s.o.keepAlive > 0 && keepAlive == 0 {
		keepAlive = 1
	}
	// CONNECT: protocol "MQTT" level 4, clean session, user name and
	// password.
	var flags byte = 0x02
	if s.o.username != "" {
		flags |= 0x80
	}
	if s.o.password != "" {
		flags |= 0x40
	}
	b := appendMQTTString(make([]byte, 0, 64), "MQTT")
	b = append(b, 4, flags)
	b = binary.BigEndian.AppendUint16(b, keepAlive)
	b = appendMQTTString(b, s.o.clientID)
	if s.o.username != "" {
		b = appendMQTTString(b, s.o.username)
	}
	if s.o.password != "" {
		b = appendMQTTString(b, s.o.password)
	}
	if err := s.write(mqttConnect<<4, b); err != nil {
		return fail("mqtt login", err)
	}
	var buf []byte
	hdr, body, err := readMQTTPacket(s.br, &buf)
	if err != nil {
		return fail("mqtt login: waiting for CONNACK", err)
	}
	if hdr>>4 != mqttConnack || len(body) != 2 {
		return fail("mqtt login", fmt.Errorf("got packet type %d, want CONNACK", hdr>>4))
	}
	if rc := body[1]; rc != 0 {
		return fail("mqtt login", connackError(rc))
	}
	if len(s.o.subscribe) > 0 {
		// As long again for the SUBACK: a login can take a while when the
		// edge is busy checking passwords. (A cancel after the check sets
		// its past deadline after this one.)
		if err := ctx.Err(); err != nil {
			return fail("mqtt subscribe", err)
		}
		if err := s.conn.SetDeadline(time.Now().Add(s.o.timeout)); err != nil {
			return fail("mqtt subscribe", err)
		}
		b = binary.BigEndian.AppendUint16(b[:0], s.packetID())
		for _, t := range s.o.subscribe {
			b = append(appendMQTTString(b, t), 1)
		}
		id := binary.BigEndian.Uint16(b)
		if err := s.write(mqttSubscribe<<4|0x02, b); err != nil {
			return fail("mqtt subscribe", err)
		}
		for {
			hdr, body, err := readMQTTPacket(s.br, &buf)
			if err != nil {
				return fail("mqtt subscribe: waiting for SUBACK", err)
			}
			if hdr>>4 != mqttSuback {
				// The edge may send retained messages before the SUBACK.
				if err := s.handle(hdr, body); err != nil {
					return fail("mqtt subscribe", err)
				}
				continue
			}
			if len(body) != 2+len(s.o.subscribe) || binary.BigEndian.Uint16(body) != id {
				return fail("mqtt subscribe", errors.New("malformed SUBACK"))
			}
			for i, rc := range body[2:] {
				if rc > 2 {
					return fail("mqtt subscribe", fmt.Errorf("the edge refused the subscription to %s", s.o.subscribe[i]))
				}
			}
			break
		}
	}
	// Messages that came right behind the SUBACK stay in s.br: the read
	// loop starts with them.
	if !stop() {
		return fail("mqtt subscribe", context.Cause(ctx))
	}
	return s.conn.SetDeadline(time.Time{})
}

func connackError(rc byte) error {
	msg := "refused"
	switch rc {
	case 1:
		msg = "unacceptable protocol version"
	case 2:
		msg = "client identifier rejected"
	case 3:
		msg = "server unavailable"
	case 4:
		msg = "bad user name or password"
	case 5:
		msg = "not authorized"
	}
	return fmt.Errorf("refused: %s (CONNACK %d)", msg, rc)
}

// publish sends payload to topic at QoS 1 and returns once it is written;
// a failed write closes the session (onLost reports it).
func (s *mqttSession) publish(topic string, payload []byte) error {
	if len(topic) > 0xffff {
		return errors.New("mqtt: topic longer than 65535 bytes")
	}
	return s.writeFunc(mqttPublish<<4|0x02, 2+len(topic)+2+len(payload), func(b []byte) []byte {
		b = appendMQTTString(b, topic)
		b = binary.BigEndian.AppendUint16(b, s.packetIDLocked())
		return append(b, payload...)
	})
}

// disconnect sends DISCONNECT (waiting at most wait for the write; none
// when wait is 0), closes the connection and waits for the session's
// goroutines. onLost is not called.
func (s *mqttSession) disconnect(wait time.Duration) {
	s.closing.Store(true)
	if wait > 0 {
		select {
		case <-s.done:
		default:
			s.wmu.Lock()
			_ = s.conn.SetWriteDeadline(time.Now().Add(wait))
			_, _ = s.conn.Write([]byte{mqttDisconnect << 4, 0})
			s.wmu.Unlock()
		}
	}
	s.fail(errDisconnected)
	s.wg.Wait()
}

// fail closes the session once; unless it was disconnected on purpose it
// reports err to onLost.
func (s *mqttSession) fail(err error) {
	s.closeOnce.Do(func() {
		close(s.done)
		_ = s.conn.Close()
		if !s.closing.Load() && s.o.onLost != nil {
			s.o.onLost(err)
		}
	})
}

func (s *mqttSession) readLoop() {
	defer s.wg.Done()
	var buf []byte
	for {
		if s.o.keepAlive > 0 {
			// Nothing at all from the edge, not even the answer to a
			// ping, for this long: it is gone.
			if err := s.conn.SetReadDeadline(time.Now().Add(s.o.keepAlive + s.o.timeout)); err != nil {
				s.fail(err)
				return
			}
		}
		hdr, body, err := readMQTTPacket(s.br, &buf)
		if err != nil {
			s.fail(fmt.Errorf("mqtt: read: %w", err))
			return
		}
		if err := s.handle(hdr, body); err != nil {
			s.fail(err)
			return
		}
		if cap(buf) > 64<<10 {
			buf = nil // a big packet does not pin its buffer
		}
	}
}

// handle acts on one packet from the edge.
func (s *mqttSession) handle(hdr byte, body []byte) error {
	switch hdr >> 4 {
	case mqttPublish:
		qos := hdr >> 1 & 3
		if qos > 1 || len(body) < 2 {
			return fmt.Errorf("mqtt: malformed PUBLISH (QoS %d, %d bytes)", qos, len(body))
		}
		n := int(binary.BigEndian.Uint16(body))
		rest := body[2:]
		if len(rest) < n+2*int(qos) {
			return errors.New("mqtt: malformed PUBLISH")
		}
		topic, rest := string(rest[:n]), rest[n:]
		var id uint16
		if qos == 1 {
			id, rest = binary.BigEndian.Uint16(rest), rest[2:]
		}
		if s.o.onMessage != nil {
			s.o.onMessage(topic, rest)
		}
		if qos == 1 {
			return s.writeFunc(mqttPuback<<4, 2, func(b []byte) []byte { return binary.BigEndian.AppendUint16(b, id) })
		}
	case mqttPuback, mqttSuback, mqttUnsuback, mqttPingresp:
		// PUBACKs prove nothing (status/ack does); the rest needs no answer.
	case mqttDisconnect:
		// Not in MQTT 3.1.1, but mochi sends it when it shuts down.
		return errors.New("mqtt: the edge sent DISCONNECT")
	default:
		return fmt.Errorf("mqtt: unexpected packet type %d", hdr>>4)
	}
	return nil
}

// keepAliveLoop pings when nothing was written for half the keepalive, so
// that the edge hears from an idle device at least every 3/4 keepalive: it
// drops a client after 1.5 × keepalive of silence (mochi: and times its
// writes out then).
func (s *mqttSession) keepAliveLoop() {
	defer s.wg.Done()
	every := max(s.o.keepAlive/2, 100*time.Millisecond)
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.wmu.Lock()
		idle := time.Since(s.lastWrite) >= every
		s.wmu.Unlock()
		if idle {
			if err := s.write(mqttPingreq<<4, nil); err != nil {
				return
			}
		}
	}
}

func (s *mqttSession) packetID() uint16 {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.packetIDLocked()
}

func (s *mqttSession) packetIDLocked() uint16 {
	s.nextID++
	if s.nextID == 0 {
		s.nextID = 1
	}
	return s.nextID
}

// write sends one packet with the given first byte and body.
func (s *mqttSession) write(first byte, body []byte) error {
	return s.writeFunc(first, len(body), func(b []byte) []byte { return append(b, body...) })
}

// writeFunc sends one packet of n body bytes that fill appends (with wmu
// held), in one write with a deadline. A failed write closes the session.
func (s *mqttSession) writeFunc(first byte, n int, fill func([]byte) []byte) error {
	if n > 268_435_455 {
		return errors.New("mqtt: packet too large")
	}
	s.wmu.Lock()
	b := append(s.wbuf[:0], first)
	b = appendRemainingLength(b, n)
	b = fill(b)
	err := s.conn.SetWriteDeadline(time.Now().Add(s.o.timeout))
	if err == nil {
		_, err = s.conn.Write(b)
	}
	s.lastWrite = time.Now()
	if cap(b) <= 64<<10 {
		s.wbuf = b[:0]
	} else {
		s.wbuf = nil // a big batch does not pin its buffer
	}
	s.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("mqtt: write: %w", err)
		s.fail(err)
	}
	return err
}

func appendMQTTString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendRemainingLength(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// readMQTTPacket reads one packet: its first byte and its body, which is
// read into *buf (grown as needed, reused by the caller).
func readMQTTPacket(r *bufio.Reader, buf *[]byte) (byte, []byte, error) {
	hdr, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		c, err := r.ReadByte()
		if err != nil {
			return 0, nil, noEOF(err)
		}
		n += int(c&0x7f) * mul
		if c&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, errors.New("mqtt: malformed remaining length")
		}
		mul *= 128
	}
	if n > mqttMaxInPacket {
		return 0, nil, fmt.Errorf("mqtt: packet of %d bytes is larger than %d", n, mqttMaxInPacket)
	}
	if cap(*buf) < n {
		*buf = make([]byte, n, max(n, 256))
	}
	body := (*buf)[:n]
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, noEOF(err)
	}
	return hdr, body, nil
}

// noEOF: a packet cut short is an unexpected EOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
