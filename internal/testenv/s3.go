package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 is a versitygw S3 server on loopback, serving a temp dir, with one
// bucket. Tests that need it call StartS3; without the binary they skip
// (fail under CI=true).
type S3 struct {
	Endpoint string // http://127.0.0.1:PORT
	Bucket   string
	Access   string
	Secret   string

	t         testing.TB
	bin, addr string
	data      string
	sidecar   string
	mu        sync.Mutex
	cmd       *exec.Cmd
	out       *bytes.Buffer
}

// VersityGW finds the versitygw binary on PATH or in $(go env GOPATH)/bin.
func VersityGW() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// RequireVersityGW returns the versitygw binary; without it the test is
// skipped, or fails under CI=true.
func RequireVersityGW(t testing.TB) string {
	t.Helper()
	bin := VersityGW()
	if bin == "" {
		msg := "versitygw not found on PATH or in $(go env GOPATH)/bin: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// StartS3 starts versitygw on a free loopback port and makes a bucket.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	bin := RequireVersityGW(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	root := t.TempDir()
	s := &S3{Endpoint: "http://" + addr, Bucket: "iotkv-test", Access: "testkey", Secret: "testsecret-0123456789",
		t: t, bin: bin, addr: addr, data: filepath.Join(root, "data"), sidecar: filepath.Join(root, "meta")}
	for _, d := range []string{s.data, s.sidecar} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.Start()
	t.Cleanup(s.Stop)
	c, err := minio.New(addr, &minio.Options{Creds: s.Creds(), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.MakeBucket(context.Background(), s.Bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	return s
}

// Creds are the root credentials.
func (s *S3) Creds() *credentials.Credentials { return credentials.NewStaticV4(s.Access, s.Secret, "") }

// URL is s3://BUCKET/prefix.
func (s *S3) URL(prefix string) string { return "s3://" + s.Bucket + "/" + prefix }

// Env is the environment a child process needs to reach the server.
func (s *S3) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.Access, "AWS_SECRET_ACCESS_KEY=" + s.Secret, "AWS_REGION=us-east-1"}
}

// Start (re)starts the server on the same port and data and waits for
// its health endpoint.
func (s *S3) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		cmd := exec.Command(s.bin, "--port", s.addr, "--health", "/health", "--quiet", "posix", "--sidecar", s.sidecar, s.data)
		cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.Access, "ROOT_SECRET_ACCESS_KEY="+s.Secret)
		cmd.SysProcAttr = childAttr()
		out := &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			s.t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if s.waitHealthy(exited, deadline) {
			s.cmd, s.out = cmd, out
			return
		}
		_ = cmd.Process.Kill()
		if time.Now().After(deadline) {
			s.t.Fatalf("versitygw did not become healthy: %s", out)
		}
		// It exited (the port may still be held by the previous one): again.
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *S3) waitHealthy(exited <-chan struct{}, deadline time.Time) bool {
	for time.Now().Before(deadline) {
		resp, err := http.Get(s.Endpoint + "/health")
		if err == nil {
			resp.Body.Close()
			return true
		}
		select {
		case <-exited:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return false
}

// Stop kills the server (it can be started again).
func (s *S3) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	for i := 0; i < 200; i++ { // wait until the port is closed
		c, err := net.DialTimeout("tcp", s.addr, 50*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd = nil
}

func (s *S3) String() string { return fmt.Sprintf("versitygw at %s", s.Endpoint) }
