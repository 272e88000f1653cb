package accounts

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/iotkv/iotkv"
)

// An accounts file that others can write is refused: whoever can write it
// can make themselves admin.
func TestLoadRefusesAnAccountsFileOthersCanWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	if err := (&File{}).Save(path); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o644, true}, {0o664, false}, {0o666, false}, {0o602, false}} {
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		if tc.ok != (err == nil) {
			t.Errorf("mode %04o: err = %v, want ok=%v", tc.mode, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: the error does not say how to fix it: %v", tc.mode, err)
		}
		if _, err := Open(Options{Path: path}); tc.ok != (err == nil) {
			t.Errorf("mode %04o: Open err = %v, want ok=%v", tc.mode, err, tc.ok)
		}
	}
}

// Saving keeps the owner, group and mode of an existing file: root runs
// `iotkv users`, a server running as another user keeps reading it. A new
// file is 0600.
func TestSaveKeepsTheOwnerAndModeOfTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	f := &File{}
	if err := f.Save(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("a new accounts file has mode %04o, want 0600", st.Mode().Perm())
	}
	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 { // only root can give a file away: prove it with other ids
		uid, gid = 65532, 65533
	}
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := f.Add("dev1", iotkv.RoleDevice, "dev1-password", 10); err != nil {
		t.Fatal(err)
	}
	if err := f.Save(path); err != nil {
		t.Fatal(err)
	}
	st, err = os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm() != 0o640 || int(sys.Uid) != uid || int(sys.Gid) != gid {
		t.Errorf("after Save: mode %04o owner %d:%d, want 0640 %d:%d", st.Mode().Perm(), sys.Uid, sys.Gid, uid, gid)
	}
	if g, err := Load(path); err != nil || len(g.Accounts) != 1 {
		t.Errorf("Load after Save: %v, %+v", err, g)
	}
}
