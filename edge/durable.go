package edge

import (
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Durable reads. The committer writes a group into Pebble before its
// fsync (so the next group's WAL write overlaps this one's sync), and
// Pebble makes the group visible at once. A read straight from Pebble could
// then return a value a crash takes back. So reads go through a Pebble
// snapshot taken right after a group is applied and before the next one
// is, and published only once that group's fsync succeeded. A group whose
// fsync fails is never published: its values stay invisible to reads
// until the restart, after which they are gone from disk anyway.
//
// Cost: one snapshot per group commit (not per write), and per read a
// shared lock and two atomic adds.

// durableView holds the snapshot reads use.
type durableView struct {
	mu  sync.RWMutex
	cur *viewRef // nil: read Pebble directly (no committer yet)
}

// viewRef counts the readers of one snapshot; the view holds one ref
// while the snapshot is current.
type viewRef struct {
	snap *pebble.Snapshot
	refs atomic.Int64
}

func (v *viewRef) release() {
	if v.refs.Add(-1) == 0 {
		_ = v.snap.Close()
	}
}

// acquire returns the reader for one read and its release.
func (d *durableView) acquire(db *pebble.DB) (pebble.Reader, func()) {
	d.mu.RLock()
	v := d.cur
	if v != nil {
		v.refs.Add(1)
	}
	d.mu.RUnlock()
	if v == nil {
		return db, func() {}
	}
	return v.snap, v.release
}

// publish makes snap what reads see; it takes ownership of snap.
func (d *durableView) publish(snap *pebble.Snapshot) {
	v := &viewRef{snap: snap}
	v.refs.Store(1)
	d.mu.Lock()
	old := d.cur
	d.cur = v
	d.mu.Unlock()
	if old != nil {
		old.release()
	}
}

// close drops the view's snapshot (reads in flight keep theirs until
// they finish). Safe to call twice.
func (d *durableView) close() {
	d.mu.Lock()
	old := d.cur
	d.cur = nil
	d.mu.Unlock()
	if old != nil {
		old.release()
	}
}
