package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// tlsListener is a mochi listener that serves TLS only and gives every new
// connection a deadline for the TLS handshake and the CONNECT packet; mochi
// replaces it with the keepalive deadline once CONNECT is read.
type tlsListener struct {
	id       string
	addr     string
	config   *tls.Config
	deadline time.Duration
	log      *slog.Logger

	ln        net.Listener
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ listeners.Listener = (*tlsListener)(nil)

func (l *tlsListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return fmt.Errorf("listen mqtt %s: %w", l.addr, err)
	}
	l.ln = tls.NewListener(ln, l.config)
	return nil
}

func (l *tlsListener) Serve(establish listeners.EstablishFn) {
	var backoff time.Duration
	for {
		conn, err := l.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of file descriptors and the like: wait and go on, as
			// net/http does, instead of closing MQTT for good.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("mqtt accept failed; retrying", "err", err, "in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		_ = conn.SetDeadline(time.Now().Add(l.deadline))
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			if err := establish(l.id, conn); err != nil {
				l.log.Debug("mqtt connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

func (l *tlsListener) ID() string       { return l.id }
func (l *tlsListener) Protocol() string { return "tcp" }

func (l *tlsListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

// stopAccepting closes the socket; connected clients stay.
func (l *tlsListener) stopAccepting() {
	l.closeOnce.Do(func() {
		if l.ln != nil {
			_ = l.ln.Close()
		}
	})
}

func (l *tlsListener) Close(closeClients listeners.CloseFn) {
	l.stopAccepting()
	closeClients(l.id)
	l.wg.Wait()
}
