package edge_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// A master that sends the start of a backup and then nothing more must not
// hold the restore (and the edge's start) forever: the fetch fails after
// IdleTimeout without a byte, and the data dir is left untouched.
func TestRestoreFailsWhenTheMasterStallsMidBody(t *testing.T) {
	dir := testenv.NewPKI(t).Dir
	for _, r := range []certs.Request{{Name: "master", Role: certs.RoleMaster}, {Name: "e9", Role: certs.RoleEdge}} {
		if err := certs.Issue(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	tc, err := certs.ServerConfig(certs.PathsFor(dir, "master"), tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	stalled := make(chan struct{})
	release := make(chan struct{})
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, TLSConfig: tc, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"edge":"e9","incarnation":"abc","seq":3,"taken_at":"2026-11-25T00:00:00Z","devices":[],"entries":[`))
		w.(http.Flusher).Flush()
		close(stalled)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		close(release)
		_ = srv.Close()
	})

	data := filepath.Join(t.TempDir(), "data")
	start := time.Now()
	err = edge.Restore(context.Background(), edge.RestoreOptions{
		URL: "https://" + ln.Addr().String(), ID: "e9", Password: "x", TLSFiles: certs.PathsFor(dir, "e9"),
		DataDir: data, IdleTimeout: 500 * time.Millisecond,
	})
	took := time.Since(start)
	select {
	case <-stalled:
	default:
		t.Fatalf("the master never sent the start of the body (restore: %v)", err)
	}
	if err == nil || !strings.Contains(err.Error(), "no data from the master") {
		t.Fatalf("restore from a stalled master: %v, want an idle-timeout error", err)
	}
	if took > 10*time.Second {
		t.Fatalf("restore took %v to give up; IdleTimeout is 500ms", took)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("data dir after a failed restore: %v, want none", err)
	}
}
