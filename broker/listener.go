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

	mu    sync.Mutex
	conns map[net.Conn]struct{} // every connection still being served
	done  bool
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
		if !l.track(conn) {
			_ = conn.Close()
			return
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer l.untrack(conn)
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

func (l *tlsListener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return false
	}
	if l.conns == nil {
		l.conns = map[net.Conn]struct{}{}
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *tlsListener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// Close disconnects mochi's clients, then closes every connection still
// open: one still in its TLS handshake or waiting for bcrypt is not yet a
// mochi client, and would otherwise attach after closeClients and keep
// Close waiting.
func (l *tlsListener) Close(closeClients listeners.CloseFn) {
	l.stopAccepting()
	closeClients(l.id)
	l.mu.Lock()
	l.done = true
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}
