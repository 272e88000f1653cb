package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// Server is a broker or baseline the harness started.
type Server struct {
	Name  string
	MQTT  string // host:port of MQTT over TLS
	HTTPS string
	Pprof string
	Proc  *Proc
	Data  string
	Extra map[string]string // everything the child reported
}

// Stop stops the server.
func (s *Server) Stop() {
	if s != nil && s.Proc != nil {
		s.Proc.Stop(20 * time.Second)
	}
}

// Mem is the server's resident memory now.
func (s *Server) Mem() Mem {
	m, _ := ReadMem(s.Proc.Pid())
	return m
}

var serverSeq atomic.Int64

func (r *Runner) serveChild(ctx context.Context, kind string, extra ...string) (*Server, error) {
	n := serverSeq.Add(1)
	label := fmt.Sprintf("%s-%d", kind, n)
	addrFile := filepath.Join(r.Work, label+".addr")
	args := append([]string{"serve", kind, "--certs", r.PKI.Certs, "--addr-file", addrFile}, extra...)
	p, err := Start(label, r.Work, r.Self, args...)
	if err != nil {
		return nil, err
	}
	b, err := WaitFile(ctx, addrFile, p, 180*time.Second)
	if err != nil {
		p.Kill()
		return nil, err
	}
	var addrs map[string]string
	if err := json.Unmarshal(b, &addrs); err != nil {
		p.Kill()
		return nil, fmt.Errorf("%s addr file: %w", label, err)
	}
	return &Server{Name: kind, MQTT: addrs["mqtt"], HTTPS: addrs["https"], Pprof: addrs["pprof"], Proc: p, Extra: addrs}, nil
}

// StartEdge starts an edge on data (a fresh dir when empty).
func (r *Runner) StartEdge(ctx context.Context, data string, authCache int, extra ...string) (*Server, error) {
	if data == "" {
		var err error
		if data, err = os.MkdirTemp(r.Work, "edge-data-"); err != nil {
			return nil, fmt.Errorf("edge data: %w", err)
		}
	}
	s, err := r.serveChild(ctx, "edge", append([]string{"--accounts", r.PKI.Accounts, "--data", data, "--auth-cache", fmt.Sprint(authCache)}, extra...)...)
	if err != nil {
		return nil, err
	}
	s.Data = data
	return s, nil
}

// StartRestoredEdge starts an edge that first restores an empty data dir
// from the master at url.
func (r *Runner) StartRestoredEdge(ctx context.Context, url string) (*Server, error) {
	data, err := os.MkdirTemp(r.Work, "edge-restored-")
	if err != nil {
		return nil, fmt.Errorf("edge data: %w", err)
	}
	s, err := r.serveChild(ctx, "edge", "--accounts", r.PKI.Accounts, "--data", data, "--restore-from", url)
	if err != nil {
		return nil, err
	}
	s.Data = data
	return s, nil
}

// StartMaster starts a master backing up the edge at edgeMQTT.
func (r *Runner) StartMaster(ctx context.Context, edgeMQTT string, snapshot time.Duration) (*Server, error) {
	data, err := os.MkdirTemp(r.Work, "master-data-")
	if err != nil {
		return nil, fmt.Errorf("master data: %w", err)
	}
	s, err := r.serveChild(ctx, "master", "--accounts", r.PKI.Accounts, "--data", data, "--edge-addr", edgeMQTT, "--snapshot-interval", snapshot.String())
	if err != nil {
		return nil, err
	}
	s.Data = data
	return s, nil
}

// StartMochi starts bare mochi with mTLS and no store.
func (r *Runner) StartMochi(ctx context.Context) (*Server, error) { return r.serveChild(ctx, "mochi") }

// StartPlainHTTPS starts the net/http TLS handler that returns a constant.
func (r *Runner) StartPlainHTTPS(ctx context.Context) (*Server, error) {
	return r.serveChild(ctx, "http")
}

// StartMosquitto starts mosquitto with TLS, required client certificates
// and the password file, persistence off (its default).
func (r *Runner) StartMosquitto(ctx context.Context) (*Server, error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		return nil, fmt.Errorf("%w: mosquitto is not installed (apt-get install -y mosquitto)", ErrSkip)
	}
	addr, err := FreePort()
	if err != nil {
		return nil, err
	}
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	p := r.PKI.Paths(EdgeID)
	conf := fmt.Sprintf(`user root
per_listener_settings false
allow_anonymous false
password_file %s
persistence false
log_dest stderr
log_type error
log_type warning
max_connections -1
listener %s 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
tls_version tlsv1.2
`, r.PKI.MosqPasswd, port, p.CA, p.Cert, p.Key)
	n := serverSeq.Add(1)
	cf := filepath.Join(r.Work, fmt.Sprintf("mosquitto-%d.conf", n))
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("mosquitto config: %w", err)
	}
	proc, err := Start(fmt.Sprintf("mosquitto-%d", n), r.Work, bin, "-c", cf)
	if err != nil {
		return nil, err
	}
	if err := WaitTCP(ctx, addr, proc, 10*time.Second); err != nil {
		proc.Kill()
		return nil, err
	}
	return &Server{Name: "mosquitto", MQTT: addr, Proc: proc}, nil
}

// NATSVersion is the nats-server the harness is written for (MQTT over
// mTLS, JetStream with sync_interval: always); `make bench` installs it
// into .cache/bin.
const (
	NATSVersion = "v2.15.2"
	natsInstall = "GOBIN=$PWD/.cache/bin go install github.com/nats-io/nats-server/v2@" + NATSVersion
)

// natsBinary is the nats-server to run: Config.NATS, else one on PATH or
// in GOPATH/bin. It refuses a release older than 2.15 (2.9 has no
// sync_interval).
func (r *Runner) natsBinary() (string, error) {
	bin := r.NATS
	if bin == "" {
		if bin = goTool("nats-server"); bin == "" {
			return "", fmt.Errorf("%w: nats-server is not installed (%s, then --nats-server .cache/bin/nats-server)", ErrSkip, natsInstall)
		}
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nats-server %s --version: %w: %s", bin, err, out)
	}
	v := strings.TrimSpace(string(out))
	var major, minor int
	if i := strings.LastIndex(v, " v"); i < 0 {
		return "", fmt.Errorf("nats-server %s: cannot read its version from %q", bin, v)
	} else if _, err := fmt.Sscanf(v[i+2:], "%d.%d", &major, &minor); err != nil {
		return "", fmt.Errorf("nats-server %s: cannot read its version from %q", bin, v)
	}
	if major < 2 || (major == 2 && minor < 15) {
		return "", fmt.Errorf("nats-server %s is %s; the NATS baseline needs 2.15 or later (JetStream sync_interval: always), written for %s: `make bench` installs it (%s)", bin, v, NATSVersion, natsInstall)
	}
	return bin, nil
}

// goTool finds a tool installed with go install: on PATH or in
// $(go env GOPATH)/bin; "" when it is in neither.
func goTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return ""
	}
	for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
		p := filepath.Join(dir, "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// StartNATS starts nats-server with its MQTT listener over mTLS, the bench
// accounts, and JetStream fsyncing every write (sync_interval: always).
func (r *Runner) StartNATS(ctx context.Context, devices []string) (*Server, error) {
	bin, err := r.natsBinary()
	if err != nil {
		return nil, err
	}
	r.Log.Info("NATS baseline", "binary", bin)
	addr, err := FreePort()
	if err != nil {
		return nil, err
	}
	n := serverSeq.Add(1)
	store := filepath.Join(r.Work, fmt.Sprintf("nats-js-%d", n))
	p := r.PKI.Paths(EdgeID)
	var users strings.Builder
	for _, d := range devices {
		fmt.Fprintf(&users, "    {user: %q, password: %q}\n", d, Password(d))
	}
	conf := fmt.Sprintf(`server_name: bench
listen: "127.0.0.1:-1"
jetstream {
  store_dir: %q
  sync_interval: always
}
authorization {
  users: [
%s  ]
}
mqtt {
  listen: %q
  tls {
    cert_file: %q
    key_file: %q
    ca_file: %q
    verify: true
    timeout: 5
  }
}
`, store, users.String(), addr, p.Cert, p.Key, p.CA)
	cf := filepath.Join(r.Work, fmt.Sprintf("nats-%d.conf", n))
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("nats config: %w", err)
	}
	proc, err := Start(fmt.Sprintf("nats-%d", n), r.Work, bin, "-c", cf)
	if err != nil {
		return nil, err
	}
	if err := WaitTCP(ctx, addr, proc, 20*time.Second); err != nil {
		proc.Kill()
		return nil, err
	}
	return &Server{Name: "nats-always", MQTT: addr, Proc: proc, Data: store}, nil
}

// Profile takes a CPU profile of a server child for d and saves it under
// the results directory.
func (r *Runner) Profile(ctx context.Context, s *Server, name string, d time.Duration) (string, error) {
	if s.Pprof == "" {
		return "", fmt.Errorf("%s has no pprof endpoint", s.Name)
	}
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.Pprof, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	path := filepath.Join(r.Out, "profile-"+name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	return path, nil
}
