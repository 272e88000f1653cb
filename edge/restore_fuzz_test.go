package edge

import (
	"bytes"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// FuzzLoadBackup feeds the restore side: a document from the master loaded
// into an in-memory store. It must never panic, and a document it accepts
// leaves every entry readable.
func FuzzLoadBackup(f *testing.F) {
	for _, s := range []string{
		`{"edge":"e1","incarnation":"ab","seq":3,"taken_at":"2026-01-01T00:00:00.000Z","devices":[{"device":"d","last_seq":9}],"entries":[{"device":"d","key":"a","value":1,"ts":null},{"device":"d","key":"b/c","value":"x","ts":5}]}`,
		`{"edge":"e2","seq":3,"taken_at":"t","entries":[]}`,
		`{"edge":"e1","seq":1,"taken_at":"t","entries":[{"device":"d","key":"a","value":1},{"device":"d","key":"a","value":2}]}`,
		`{"edge":"e1","taken_at":"t","devices":[{"device":"../x","last_seq":1}]}`,
		`{"edge":"e1"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		store, err := OpenStore("db", StoreOptions{FS: vfs.NewMem()})
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		if _, _, err := LoadBackup(bytes.NewReader(data), "e1", store, nil); err != nil {
			return
		}
		devs, err := store.Devices()
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range devs {
			if _, _, err := store.List(d.Device, "", "", 10); err != nil {
				t.Fatal(err)
			}
		}
	})
}
