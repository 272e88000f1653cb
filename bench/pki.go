package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
)

// Fixed identities of the bench PKI besides the devices.
const (
	EdgeID     = "edge1"
	ReaderName = "bench-reader" // role reader, bcrypt cost 12: what REST reads log in with
	WriterName = "bench-writer" // role writer, cost 10
	AdminName  = "bench-admin"  // role admin, cost 10
	MasterName = "master"       // role master, cost 10
	deviceCost = 10
	readerCost = 12
)

// PKI is a CA, the server and device identities, the iotkv accounts file
// and a mosquitto password file with the same passwords. Generating
// thousands of bcrypt hashes takes minutes, so it is cached between runs.
type PKI struct {
	Dir        string
	Certs      string // ca.crt, NAME.crt, NAME.key
	Accounts   string
	MosqPasswd string
	Devices    []string
}

// Password is the password of every bench identity.
func Password(name string) string { return name + "-bench-pw" }

// DeviceName is the name of device i (from 1).
func DeviceName(i int) string { return fmt.Sprintf("dev-%05d", i) }

type pkiMeta struct {
	Devices int `json:"devices"`
}

// EnsurePKI returns the cached PKI under dir with at least n devices,
// creating or extending it.
func EnsurePKI(dir string, n int, log *slog.Logger) (*PKI, error) {
	p := &PKI{Dir: dir, Certs: filepath.Join(dir, "certs"), Accounts: filepath.Join(dir, "accounts.json"), MosqPasswd: filepath.Join(dir, "mosquitto.passwd")}
	var meta pkiMeta
	if b, err := os.ReadFile(filepath.Join(dir, "meta.json")); err == nil {
		_ = json.Unmarshal(b, &meta)
	}
	if meta.Devices == 0 {
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("reset pki cache: %w", err)
		}
		if err := certs.Init(p.Certs, false); err != nil {
			return nil, fmt.Errorf("bench pki: %w", err)
		}
	}
	if meta.Devices < n {
		start := time.Now()
		log.Info("generating bench identities (cached for later runs)", "have", meta.Devices, "want", n, "dir", dir)
		if err := p.extend(meta.Devices, n); err != nil {
			return nil, err
		}
		meta.Devices = n
		b, _ := json.Marshal(meta)
		if err := os.WriteFile(filepath.Join(dir, "meta.json"), b, 0o644); err != nil {
			return nil, fmt.Errorf("bench pki meta: %w", err)
		}
		log.Info("identities ready", "devices", n, "took", time.Since(start).Round(time.Millisecond))
	}
	for i := 1; i <= meta.Devices; i++ {
		p.Devices = append(p.Devices, DeviceName(i))
	}
	return p, nil
}

type ident struct {
	name     string
	role     iotkv.Role
	certRole string
	cost     int
}

func (p *PKI) extend(from, to int) error {
	var ids []ident
	if from == 0 {
		ids = append(ids,
			ident{EdgeID, iotkv.RoleEdge, certs.RoleEdge, deviceCost},
			ident{MasterName, iotkv.RoleMaster, certs.RoleMaster, deviceCost},
			ident{ReaderName, iotkv.RoleReader, certs.RoleClient, readerCost},
			ident{WriterName, iotkv.RoleWriter, certs.RoleClient, deviceCost},
			ident{AdminName, iotkv.RoleAdmin, certs.RoleClient, deviceCost},
		)
	}
	for i := from + 1; i <= to; i++ {
		ids = append(ids, ident{DeviceName(i), iotkv.RoleDevice, certs.RoleDevice, deviceCost})
	}
	f, err := accounts.Load(p.Accounts)
	if err != nil {
		return err
	}
	out := make([]accounts.Account, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	work := make(chan int)
	for w := 0; w < runtime.NumCPU(); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				id := ids[i]
				err := certs.Issue(p.Certs, certs.Request{Name: id.name, Role: id.certRole, Force: true})
				if err != nil {
					errs[i] = err
					continue
				}
				h, err := accounts.HashPassword(Password(id.name), id.cost)
				out[i], errs[i] = accounts.Account{Name: id.name, Role: id.role, Hash: h}, err
			}
		}()
	}
	for i := range ids {
		work <- i
	}
	close(work)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bench identities: %w", err)
	}
	f.Accounts = append(f.Accounts, out...)
	if err := f.Save(p.Accounts); err != nil {
		return err
	}
	return p.writeMosquittoPasswd(f)
}

// writeMosquittoPasswd writes name:password lines and hashes them in place
// with mosquitto_passwd -U (PBKDF2, mosquitto's own format).
func (p *PKI) writeMosquittoPasswd(f *accounts.File) error {
	if _, err := exec.LookPath("mosquitto_passwd"); err != nil {
		return nil // the mosquitto baselines are skipped anyway
	}
	var sb strings.Builder
	for _, a := range f.Accounts {
		fmt.Fprintf(&sb, "%s:%s\n", a.Name, Password(a.Name))
	}
	if err := os.WriteFile(p.MosqPasswd, []byte(sb.String()), 0o600); err != nil {
		return fmt.Errorf("mosquitto password file: %w", err)
	}
	if out, err := exec.Command("mosquitto_passwd", "-U", p.MosqPasswd).CombinedOutput(); err != nil {
		return fmt.Errorf("mosquitto_passwd -U: %v: %s", err, out)
	}
	return nil
}

// Paths are the certificate files of name.
func (p *PKI) Paths(name string) certs.Paths { return certs.PathsFor(p.Certs, name) }
