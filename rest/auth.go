package rest

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
)

type ctxKey struct{}

// Principal is the authenticated caller.
type Principal struct {
	Name string
	Role iotkv.Role
}

// PrincipalFrom returns the caller Authenticate stored in ctx.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}

// Authenticator checks Basic credentials against the accounts (with their
// cache of verified credentials) and throttles repeated failures.
type Authenticator struct {
	Accounts *accounts.Store
	Throttle *accounts.Throttle
	failures *prometheus.CounterVec
}

// NewAuthenticator registers its failure counter on reg.
func NewAuthenticator(a *accounts.Store, t *accounts.Throttle, reg prometheus.Registerer) (*Authenticator, error) {
	if t == nil {
		t = accounts.NewThrottle()
	}
	f := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "iotkv_rest_auth_failures_total", Help: "Failed REST logins, by reason.",
	}, []string{"reason"})
	if err := reg.Register(f); err != nil {
		return nil, err
	}
	return &Authenticator{Accounts: a, Throttle: t, failures: f}, nil
}

// Middleware requires valid Basic credentials.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok {
			unauthorized(w, "credentials required")
			return
		}
		addr, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			addr = r.RemoteAddr
		}
		if wait := a.Throttle.Wait(user, addr); wait > 0 {
			a.failures.WithLabelValues("throttled").Inc()
			tooMany(w, wait)
			return
		}
		acct, _, err := a.Accounts.Verify(r.Context(), user, pass)
		if err != nil && !errors.Is(err, accounts.ErrBadCredentials) {
			// Not the caller's fault (a storm of password checks, or the
			// client went away): not counted against it.
			a.failures.WithLabelValues("busy").Inc()
			w.Header().Set("Retry-After", "1")
			WriteError(w, http.StatusServiceUnavailable, iotkv.CodeUnavailable, "password checks are busy; retry")
			return
		}
		if err != nil {
			wait := a.Throttle.Fail(user, addr)
			a.failures.WithLabelValues("bad_password").Inc()
			logFrom(r).Warn("rest login refused: bad username or password", "user", user, "remote", addr)
			if wait > 0 {
				tooMany(w, wait)
				return
			}
			unauthorized(w, "bad username or password")
			return
		}
		a.Throttle.Success(user, addr)
		ctx := context.WithValue(r.Context(), ctxKey{}, Principal{Name: acct.Name, Role: acct.Role})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func unauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Basic realm="iotkv"`)
	WriteError(w, http.StatusUnauthorized, iotkv.CodeUnauthenticated, msg)
}

func tooMany(w http.ResponseWriter, wait time.Duration) {
	secs := int((wait + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	WriteError(w, http.StatusTooManyRequests, iotkv.CodeRateLimited, "too many failed logins; retry after "+strconv.Itoa(secs)+"s")
}

// RequireRole lets only the given roles through.
func RequireRole(roles ...iotkv.Role) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, _ := PrincipalFrom(r.Context())
			for _, role := range roles {
				if p.Role == role {
					next.ServeHTTP(w, r)
					return
				}
			}
			WriteError(w, http.StatusForbidden, iotkv.CodeNotAuthorized, "role "+string(p.Role)+" may not do this")
		})
	}
}

// PeerCheck refuses, with 401 and the connection closed, a request on a
// connection whose client certificate check now refuses (revoked since
// the handshake): a keep-alive connection does not outlive a revocation.
// The handshake itself refuses new connections with such a certificate.
func PeerCheck(check func(tls.ConnectionState) error) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
				if err := check(*r.TLS); err != nil {
					logFrom(r).Warn("rest request refused", "remote", r.RemoteAddr, "err", err)
					w.Header().Set("Connection", "close")
					unauthorized(w, "client certificate refused: "+err.Error())
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}
