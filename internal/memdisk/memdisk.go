// Package memdisk is a Pebble file system for fault tests: a crashable
// in-memory disk whose WAL (*.log) files fail on demand, and a power loss
// that keeps only what was synced.
package memdisk

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// Fault is what the disk does to WAL files.
type Fault int32

const (
	OK        Fault = iota
	FsyncFail       // every sync fails (EIO)
	DiskFull        // every write and sync fails (ENOSPC)
)

func (f Fault) String() string { return [...]string{"ok", "fsync EIO", "disk full"}[f] }

// Disk is the crashable disk. Faults hit only the WAL: a failed MANIFEST
// write is fatal by design in Pebble, and the WAL is where an
// acknowledgement is made durable. The zero Disk is not usable: use New.
type Disk struct {
	fault atomic.Int32
	mu    sync.Mutex
	mem   *vfs.MemFS
	// gate keeps a crash out of the MemFS methods that take its clone lock
	// twice (Link, ReuseForWrite, Lock): a CrashClone waiting between the
	// two read locks deadlocks them (cockroachdb/pebble#5993, fixed after
	// the v2 release in use).
	gate sync.RWMutex
}

// New returns an empty disk.
func New() *Disk { return &Disk{mem: vfs.NewCrashableMem()} }

// SetFault sets what WAL operations do from now on.
func (d *Disk) SetFault(f Fault) { d.fault.Store(int32(f)) }

// FS returns the disk as it is now, for one store to open: after a Crash,
// a store opened earlier keeps writing to the disk it had.
func (d *Disk) FS() vfs.FS {
	d.mu.Lock()
	defer d.mu.Unlock()
	return gatedFS{FS: errorfs.Wrap(d.mem, errorfs.InjectorFunc(d.inject)), gate: &d.gate}
}

func (d *Disk) inject(op errorfs.Op) error {
	f := Fault(d.fault.Load())
	if f == OK || !strings.HasSuffix(op.Path, ".log") {
		return nil
	}
	sync := op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData || op.Kind == errorfs.OpFileSyncTo
	write := op.Kind == errorfs.OpFileWrite || op.Kind == errorfs.OpFileWriteAt || op.Kind == errorfs.OpFilePreallocate || op.Kind == errorfs.OpCreate
	switch {
	case f == FsyncFail && sync:
		return fmt.Errorf("%s: %w", op.Path, syscall.EIO)
	case f == DiskFull && (sync || write):
		return fmt.Errorf("%s: %w", op.Path, syscall.ENOSPC)
	}
	return nil
}

// Crash is a power loss: the disk keeps only what was synced, and works
// again (no fault).
func (d *Disk) Crash() {
	d.gate.Lock()
	defer d.gate.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mem = d.mem.CrashClone(vfs.CrashCloneCfg{})
	d.fault.Store(int32(OK))
}

// gatedFS runs the MemFS methods that lock its clone lock twice under the
// disk's gate (see Disk.gate).
type gatedFS struct {
	vfs.FS
	gate *sync.RWMutex
}

func (g gatedFS) Link(oldname, newname string) error {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.FS.Link(oldname, newname)
}

func (g gatedFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.FS.ReuseForWrite(oldname, newname, category)
}

func (g gatedFS) Lock(name string) (io.Closer, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.FS.Lock(name)
}
