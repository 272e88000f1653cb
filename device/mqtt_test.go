package device

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeBroker accepts one TLS connection and hands it to script.
func fakeBroker(t *testing.T, script func(c net.Conn, r *bufio.Reader)) mqttOptions {
	t.Helper()
	hs := httptest.NewUnstartedServer(nil) // only for its certificate
	hs.StartTLS()
	t.Cleanup(hs.Close)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: hs.TLS.Certificates})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		script(c, bufio.NewReader(c))
	}()
	t.Cleanup(func() { <-done })
	pool := x509.NewCertPool()
	pool.AddCert(hs.Certificate())
	return mqttOptions{
		addr: l.Addr().String(), tls: &tls.Config{RootCAs: pool, ServerName: "example.com"},
		clientID: "dev1", username: "dev1", password: "pw", keepAlive: 30 * time.Second, timeout: 2 * time.Second,
		subscribe: []string{"a/ack", "a/err", "a/sync"},
	}
}

// expect reads one packet and checks its type.
func expect(t *testing.T, r *bufio.Reader, typ byte) (byte, []byte) {
	t.Helper()
	var buf []byte
	hdr, body, err := readMQTTPacket(r, &buf)
	if err != nil {
		t.Errorf("broker: read: %v", err)
		return 0, nil
	}
	if hdr>>4 != typ {
		t.Errorf("broker: got packet type %d, want %d", hdr>>4, typ)
	}
	return hdr, append([]byte(nil), body...)
}

func send(c net.Conn, first byte, body []byte) {
	b := appendRemainingLength([]byte{first}, len(body))
	_, _ = c.Write(append(b, body...))
}

func publishBody(topic string, id uint16, payload string) []byte {
	b := appendMQTTString(nil, topic)
	if id != 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	return append(b, payload...)
}

// handshake plays the broker's side of CONNECT and SUBSCRIBE; before the
// SUBACK it sends a retained message at QoS 1 (id 7).
func brokerHandshake(t *testing.T, c net.Conn, r *bufio.Reader, keepAlive byte) {
	_, body := expect(t, r, mqttConnect)
	want := appendMQTTString(nil, "MQTT")
	want = append(want, 4, 0xc2, 0, keepAlive)
	for _, s := range []string{"dev1", "dev1", "pw"} {
		want = appendMQTTString(want, s)
	}
	if !bytes.Equal(body, want) {
		t.Errorf("CONNECT body %x, want %x", body, want)
	}
	send(c, mqttConnack<<4, []byte{0, 0})
	hdr, body := expect(t, r, mqttSubscribe)
	if hdr&0x0f != 0x02 {
		t.Errorf("SUBSCRIBE flags %x", hdr&0x0f)
	}
	want = append([]byte(nil), body[:2]...)
	for _, s := range []string{"a/ack", "a/err", "a/sync"} {
		want = append(appendMQTTString(want, s), 1)
	}
	if !bytes.Equal(body, want) {
		t.Errorf("SUBSCRIBE body %x, want %x", body, want)
	}
	send(c, mqttPublish<<4|0x03, publishBody("a/ack", 7, `{"seq":5}`)) // QoS 1, retained
	send(c, mqttSuback<<4, append(body[:2:2], 1, 1, 0))
}

func TestMQTTSession(t *testing.T) {
	type msg struct{ topic, payload string }
	var mu sync.Mutex
	var got []msg
	lost := make(chan error, 1)
	brokerDone := make(chan struct{})
	o := fakeBroker(t, func(c net.Conn, r *bufio.Reader) {
		defer close(brokerDone)
		brokerHandshake(t, c, r, 30)
		if _, body := expect(t, r, mqttPuback); !bytes.Equal(body, []byte{0, 7}) {
			t.Errorf("PUBACK of the retained message: %x", body)
		}
		send(c, mqttPublish<<4, publishBody("a/sync", 0, "nonce"))              // QoS 0
		send(c, mqttPublish<<4|0x02, publishBody("a/err", 0x1234, `{"seq":6}`)) // QoS 1
		if _, body := expect(t, r, mqttPuback); !bytes.Equal(body, []byte{0x12, 0x34}) {
			t.Errorf("PUBACK: %x", body)
		}
		hdr, body := expect(t, r, mqttPublish)
		if hdr&0x0f != 0x02 || !bytes.Equal(body[:len(body)-len("batch")-2], appendMQTTString(nil, "a/batch")) || string(body[len(body)-5:]) != "batch" {
			t.Errorf("PUBLISH %x %q", hdr, body)
		}
		send(c, mqttPuback<<4, body[len(body)-7:len(body)-5])
		expect(t, r, mqttDisconnect)
	})
	o.onMessage = func(topic string, payload []byte) {
		mu.Lock()
		got = append(got, msg{topic, string(payload)})
		mu.Unlock()
	}
	o.onLost = func(err error) { lost <- err }
	s, err := dialMQTT(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	s.start()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.publish("a/batch", []byte("batch")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	s.disconnect(time.Second)
	<-brokerDone
	want := []msg{{"a/ack", `{"seq":5}`}, {"a/sync", "nonce"}, {"a/err", `{"seq":6}`}}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("messages %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("messages %q, want %q", got, want)
		}
	}
	select {
	case err := <-lost:
		t.Fatalf("onLost after disconnect: %v", err)
	default:
	}
}

// An edge that stops answering (not even pings) is noticed within
// keepalive + timeout.
func TestMQTTSessionNoticesASilentEdge(t *testing.T) {
	release := make(chan struct{})
	o := fakeBroker(t, func(c net.Conn, r *bufio.Reader) {
		brokerHandshake(t, c, r, 1) // 300 ms is sent as 1 s
		<-release                   // reads nothing more, answers nothing
	})
	defer close(release)
	o.keepAlive, o.timeout = 300*time.Millisecond, 300*time.Millisecond
	lost := make(chan error, 1)
	o.onLost = func(err error) { lost <- err }
	s, err := dialMQTT(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	s.start()
	defer s.disconnect(0)
	select {
	case err := <-lost:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("lost: %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the silent edge was not noticed")
	}
}

func TestMQTTSessionRefused(t *testing.T) {
	o := fakeBroker(t, func(c net.Conn, r *bufio.Reader) {
		expect(t, r, mqttConnect)
		send(c, mqttConnack<<4, []byte{0, 4})
	})
	_, err := dialMQTT(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "bad user name or password") {
		t.Fatalf("got %v", err)
	}
	o = fakeBroker(t, func(c net.Conn, r *bufio.Reader) {
		expect(t, r, mqttConnect)
		send(c, mqttConnack<<4, []byte{0, 0})
		_, body := expect(t, r, mqttSubscribe)
		send(c, mqttSuback<<4, append(body[:2:2], 1, 0x80, 1))
	})
	if _, err = dialMQTT(context.Background(), o); err == nil || !strings.Contains(err.Error(), "refused the subscription to a/err") {
		t.Fatalf("got %v", err)
	}
}

func TestMQTTDialHonoursTheContext(t *testing.T) {
	release := make(chan struct{})
	o := fakeBroker(t, func(c net.Conn, r *bufio.Reader) { <-release }) // never answers CONNECT
	defer close(release)
	o.timeout = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	t0 := time.Now()
	if _, err := dialMQTT(ctx, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestMQTTRemainingLength(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268_435_455} {
		b := appendRemainingLength([]byte{0x30}, n)
		want := 2
		for m := n; m >= 128; m /= 128 {
			want++
		}
		if len(b) != want {
			t.Fatalf("%d: %d header bytes, want %d", n, len(b), want)
		}
		if n > mqttMaxInPacket {
			continue
		}
		b = append(b, make([]byte, n)...)
		var buf []byte
		hdr, body, err := readMQTTPacket(bufio.NewReader(bytes.NewReader(b)), &buf)
		if err != nil || hdr != 0x30 || len(body) != n {
			t.Fatalf("%d: hdr %x, %d bytes, %v", n, hdr, len(body), err)
		}
	}
	var buf []byte
	big := appendRemainingLength([]byte{0x30}, mqttMaxInPacket+1)
	if _, _, err := readMQTTPacket(bufio.NewReader(bytes.NewReader(big)), &buf); err == nil {
		t.Fatal("a packet above the limit was read")
	}
	if _, _, err := readMQTTPacket(bufio.NewReader(bytes.NewReader([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 1})), &buf); err == nil {
		t.Fatal("a 5-byte remaining length was read")
	}
	if _, _, err := readMQTTPacket(bufio.NewReader(bytes.NewReader([]byte{0x30, 5, 1})), &buf); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a cut packet: %v", err)
	}
}
