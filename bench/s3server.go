package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Server is versitygw serving a directory of the work dir on loopback,
// with one bucket: the real S3 server the master-on-S3 scenario stores to.
// Its posix backend keeps object KEY of the bucket at Data/Bucket/KEY.
type S3Server struct {
	Endpoint string // http://127.0.0.1:PORT
	Bucket   string
	Data     string
	Proc     *Proc
}

const (
	s3Access = "bench"
	s3Secret = "bench-secret-0123456789"
)

// versityInstall is how to get the server the S3 scenario needs.
const versityInstall = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// Env is the environment a child needs to reach the server.
func (s *S3Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s3Access, "AWS_SECRET_ACCESS_KEY=" + s3Secret, "AWS_REGION=us-east-1"}
}

// URL is s3://BUCKET/prefix.
func (s *S3Server) URL(prefix string) string { return "s3://" + s.Bucket + "/" + prefix }

// Stop stops the server.
func (s *S3Server) Stop() {
	if s != nil && s.Proc != nil {
		s.Proc.Stop(5 * time.Second)
	}
}

// StartS3 starts versitygw (posix backend, metadata in a sidecar dir so the
// file system needs no xattrs) on a free loopback port, waits for its
// health endpoint and makes the bucket. Without versitygw it returns
// ErrSkip.
func (r *Runner) StartS3(ctx context.Context) (*S3Server, error) {
	bin := goTool("versitygw")
	if bin == "" {
		return nil, fmt.Errorf("%w: versitygw not installed (%s)", ErrSkip, versityInstall)
	}
	n := serverSeq.Add(1)
	root := filepath.Join(r.Work, fmt.Sprintf("s3-%d", n))
	data, meta := filepath.Join(root, "data"), filepath.Join(root, "meta")
	for _, d := range []string{data, meta} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("s3 server: %w", err)
		}
	}
	addr, err := FreePort()
	if err != nil {
		return nil, err
	}
	env := []string{"ROOT_ACCESS_KEY_ID=" + s3Access, "ROOT_SECRET_ACCESS_KEY=" + s3Secret}
	p, err := StartEnv(fmt.Sprintf("versitygw-%d", n), r.Work, env, bin,
		"--port", addr, "--health", "/health", "--quiet", "posix", "--sidecar", meta, data)
	if err != nil {
		return nil, err
	}
	s := &S3Server{Endpoint: "http://" + addr, Bucket: "iotkv-bench", Data: data, Proc: p}
	if err := waitHealthy(ctx, s.Endpoint+"/health", p, 20*time.Second); err != nil {
		p.Kill()
		return nil, err
	}
	c, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(s3Access, s3Secret, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		p.Kill()
		return nil, fmt.Errorf("s3 server: %w", err)
	}
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.MakeBucket(mctx, s.Bucket, minio.MakeBucketOptions{}); err != nil {
		p.Kill()
		return nil, fmt.Errorf("s3 server: make bucket %s: %w", s.Bucket, err)
	}
	return s, nil
}

// waitHealthy polls url until it answers 200, p exits or timeout passes.
func waitHealthy(ctx context.Context, url string, p *Proc, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited: %s", p.Name, p.Tail())
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("%s health: %w", p.Name, err)
		}
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: %s not healthy after %s: %s", p.Name, url, timeout, p.Tail())
}

// iotkvBinary builds cmd/iotkv from the tree once per run, with the
// release flags of `make build`.
func (r *Runner) iotkvBinary(ctx context.Context) (string, error) {
	bin := filepath.Join(r.Work, "iotkv")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/iotkv")
	build.Dir, build.Env = r.Repo, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build iotkv: %w: %s", err, tail(out))
	}
	return bin, nil
}

// MasterStore is where `iotkv master` keeps the backups: --data DIR when
// S3 is nil, else --store S3.URL(Prefix) with the given flush.
type MasterStore struct {
	S3            *S3Server
	Prefix        string
	FlushInterval time.Duration
	FlushBytes    string // as the flag takes it: 1MiB
	LeaseTTL      time.Duration
}

// StartIotkvMaster starts the built `iotkv master` (the real command, not
// the harness's in-process "serve master") following the edge at edgeMQTT.
func (r *Runner) StartIotkvMaster(ctx context.Context, edgeMQTT string, st MasterStore, snapshot time.Duration) (*Server, error) {
	var err error
	n := serverSeq.Add(1)
	label := fmt.Sprintf("iotkv-master-%d", n)
	pw := filepath.Join(r.Work, label+".pw")
	if err := os.WriteFile(pw, []byte(Password(MasterName)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("master password file: %w", err)
	}
	args := []string{"master", "--certs", r.PKI.Certs, "--name", MasterName, "--password-file", pw,
		"--accounts", r.PKI.Accounts, "--edges", EdgeID + "=" + edgeMQTT, "--http-addr", "127.0.0.1:0",
		"--snapshot-interval", snapshot.String(), "--log-level", "warn"}
	var env []string
	data := ""
	if st.S3 == nil {
		if data, err = os.MkdirTemp(r.Work, "master-data-"); err != nil {
			return nil, fmt.Errorf("master data: %w", err)
		}
		args = append(args, "--data", data)
	} else {
		args = append(args, "--store", st.S3.URL(st.Prefix), "--s3-endpoint", st.S3.Endpoint,
			"--flush-interval", st.FlushInterval.String(), "--flush-bytes", st.FlushBytes, "--lease-ttl", st.LeaseTTL.String())
		env = st.S3.Env()
	}
	s, err := r.startIotkv(ctx, label, env, args...)
	if err != nil {
		return nil, err
	}
	s.Name, s.Data = "iotkv master", data
	return s, nil
}

// startIotkv runs the built `iotkv` with args and --addr-file, waits for
// the addresses it reports and returns it as a Server (MQTT, HTTPS and
// every other address in Extra).
func (r *Runner) startIotkv(ctx context.Context, label string, env []string, args ...string) (*Server, error) {
	bin, err := r.iotkvBinary(ctx)
	if err != nil {
		return nil, err
	}
	addrFile := filepath.Join(r.Work, label+".addr")
	p, err := StartEnv(label, r.Work, env, bin, append(args, "--addr-file", addrFile)...)
	if err != nil {
		return nil, err
	}
	b, err := WaitFile(ctx, addrFile, p, 60*time.Second)
	if err != nil {
		p.Kill()
		return nil, err
	}
	var addrs map[string]string
	if err := json.Unmarshal(b, &addrs); err != nil {
		p.Kill()
		return nil, fmt.Errorf("%s addr file: %w", label, err)
	}
	return &Server{Name: label, MQTT: addrs["mqtt"], HTTPS: addrs["https"], Proc: p, Extra: addrs}, nil
}
