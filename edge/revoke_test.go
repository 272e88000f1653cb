package edge_test

import (
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// A live session ends when its certificate is revoked or its account is
// disabled, while other sessions stay (run under -race: the sweep walks
// the broker's clients while they publish and the files reload).
func TestRevocationAndDisablingEndLiveSessions(t *testing.T) {
	p := testenv.NewPKI(t)
	for _, d := range []string{"rv-keep", "rv-cert", "rv-acct"} {
		p.Identity(t, d, iotkv.RoleDevice)
	}
	e := testenv.StartEdge(t, p, "edge1", func(o *edge.Options) { o.TLSPoll = 50 * time.Millisecond })
	lost := map[string]chan struct{}{}
	clients := map[string]paho.Client{}
	for _, d := range []string{"rv-keep", "rv-cert", "rv-acct"} {
		ch := make(chan struct{})
		lost[d] = ch
		o := p.MQTTOptions(t, e.MQTTAddr(), d)
		o.SetConnectionLostHandler(func(paho.Client, error) { close(ch) })
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", d, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(50) })
		clients[d] = c
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // traffic while the sweeps run
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			clients["rv-keep"].Publish(iotkv.DeviceNamespace("rv-keep")+"kv/k", 1, false, []byte("1")).WaitTimeout(5 * time.Second)
		}
	}()
	defer func() { close(stop); <-done }()

	if _, err := certs.Revoke(p.Dir, "rv-cert", nil, 0); err != nil {
		t.Fatal(err)
	}
	f, err := accounts.Load(p.Accounts)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetDisabled("rv-acct", true); err != nil {
		t.Fatal(err)
	}
	if err := f.Save(p.Accounts); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"rv-cert", "rv-acct"} {
		select {
		case <-lost[d]:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s's session outlived its revocation by 5 s", d)
		}
	}
	select {
	case <-lost["rv-keep"]:
		t.Fatal("an untouched session ended")
	default:
	}
	if !clients["rv-keep"].IsConnected() {
		t.Fatal("rv-keep is not connected")
	}
}
