package accounts

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
