package master

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/atomicfile"
)

// Files under DIR/{edge}/, all JSON or JSON Lines:
//
//	latest.json                the state at its seq, always complete (atomic rename)
//	state.json                 incarnation, devices' last seqs and key count of that latest.json
//	journal-{first:020d}.jsonl changes after latest.json, one per line, fsync'd before confirming
//	incoming.json              a snapshot being received (renamed to latest.json when whole)
//
// Why not a per-edge Pebble or a Go map of every key: the state lives in
// latest.json, sorted by (device, key). Changes since it are journaled and
// kept in memory as a map of the keys they touch (bounded by MaxPending,
// which forces an early snapshot), and a snapshot streams the old
// latest.json through a merge with those changes into the new one. Memory
// is O(changes per interval), not O(keys); the price is rewriting the file
// every interval (1M keys: see the benchmark), which is also what
// docs/protocol.md promises of latest.json.
const (
	latestName   = "latest.json"
	stateName    = "state.json"
	incomingName = "incoming.json"
)

// stateFile describes the latest.json with the same seq and taken_at.
type stateFile struct {
	Edge        string            `json:"edge"`
	Incarnation string            `json:"incarnation"`
	Seq         uint64            `json:"seq"`
	TakenAt     string            `json:"taken_at"`
	Keys        int               `json:"keys"`
	Devices     []iotkv.DeviceSeq `json:"devices"`
	// LastWrite is each device's newest change time (ms, edge clock), for
	// the fleet directory.
	LastWrite map[string]int64 `json:"last_write,omitempty"`
}

func writeState(dir string, st stateFile) error {
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	return atomicfile.Write(filepath.Join(dir, stateName), append(data, '\n'), 0o644)
}

func readState(dir string) (stateFile, error) {
	var st stateFile
	data, err := os.ReadFile(filepath.Join(dir, stateName))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return stateFile{}, fmt.Errorf("read state %s: %w", dir, err)
	}
	return st, nil
}

// readLatestHeader returns the header of latest.json without reading its
// entries (our writer puts the header first). A missing file is an empty
// state at seq 0.
func readLatestHeader(dir string) (iotkv.BackupHeader, bool, error) {
	f, err := os.Open(filepath.Join(dir, latestName))
	if errors.Is(err, fs.ErrNotExist) {
		return iotkv.BackupHeader{}, false, nil
	}
	if err != nil {
		return iotkv.BackupHeader{}, false, fmt.Errorf("open latest: %w", err)
	}
	defer f.Close()
	r, err := iotkv.NewBackupReader(bufio.NewReader(f))
	if err != nil {
		return iotkv.BackupHeader{}, false, fmt.Errorf("%s: %w", f.Name(), err)
	}
	if _, err := r.Next(); err != nil && !errors.Is(err, io.EOF) {
		return iotkv.BackupHeader{}, false, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return r.Header, true, nil
}

// mergeTo streams base (a latest.json, nil for none) with overlay into bw.
func mergeTo(bw *iotkv.BackupWriter, base io.Reader, overlay []iotkv.OverlayEntry) error {
	var next func() (*iotkv.BackupEntry, error)
	if base != nil {
		r, err := iotkv.NewBackupReader(bufio.NewReaderSize(base, 256<<10))
		if err != nil {
			return err
		}
		next = r.NextEntry
	}
	return iotkv.MergeEntries(bw, next, overlay)
}

// writeLatestFile merges base (nil: none) with overlay into path
// atomically and reports the number of keys written.
func writeLatestFile(path, edge string, seq uint64, takenAt string, base io.Reader, overlay []iotkv.OverlayEntry, keys *int) error {
	return atomicfile.WriteStream(path, 0o644, func(w io.Writer) error {
		bw, err := iotkv.NewBackupWriter(w, iotkv.BackupHeader{Edge: edge, Seq: seq, TakenAt: takenAt}, nil)
		if err != nil {
			return err
		}
		if err := mergeTo(bw, base, overlay); err != nil {
			return err
		}
		*keys = bw.Entries()
		return bw.Close()
	})
}

// journal is the JSON Lines file changes are appended to.
type journal struct {
	dir   string
	first uint64
	f     *os.File
	w     *bufio.Writer
	lines int
}

func journalName(first uint64) string { return fmt.Sprintf("journal-%020d.jsonl", first) }

func openJournal(dir string, first uint64) (*journal, error) {
	f, err := os.OpenFile(filepath.Join(dir, journalName(first)), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		f.Close()
		return nil, err
	}
	return &journal{dir: dir, first: first, f: f, w: bufio.NewWriterSize(f, 256<<10)}, nil
}

// append writes one change as one line (compacted: a value may hold
// newlines on the wire).
func (j *journal) append(raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	buf.WriteByte('\n')
	if _, err := j.w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	j.lines++
	return nil
}

func (j *journal) sync() error {
	if err := j.w.Flush(); err != nil {
		return fmt.Errorf("journal flush: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("journal fsync: %w", err)
	}
	return nil
}

func (j *journal) close() error {
	return errors.Join(j.sync(), j.f.Close())
}

type journalFile struct {
	first uint64
	path  string
}

func listJournals(dir string) ([]journalFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list journals: %w", err)
	}
	var out []journalFile
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), "journal-")
		if !ok {
			continue
		}
		n, ok = strings.CutSuffix(n, ".jsonl")
		first, err := strconv.ParseUint(n, 10, 64)
		if !ok || err != nil {
			continue
		}
		out = append(out, journalFile{first: first, path: filepath.Join(dir, e.Name())})
	}
	slices.SortFunc(out, func(a, b journalFile) int { return cmp.Compare(a.first, b.first) })
	return out, nil
}

// removeJournals deletes journals that start before `before`, newest
// first, so that a crash half-way leaves a contiguous prefix.
func removeJournals(dir string, before uint64) error {
	js, err := listJournals(dir)
	if err != nil {
		return err
	}
	for i := len(js) - 1; i >= 0; i-- {
		if js[i].first < before {
			if err := os.Remove(js[i].path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("prune journal: %w", err)
			}
		}
	}
	return atomicfile.SyncDir(dir)
}

// replayJournals applies the journals of dir after seq: fn sees every
// valid change in order (also those at or below seq, for device seqs).
// A torn or invalid line, or a gap in the seqs, ends the replay there: the
// file is truncated and later files removed, so the next journal continues
// from a clean, contiguous end. It returns the last contiguous seq.
func replayJournals(dir string, seq uint64, fn func(c *iotkv.Change, applied bool)) (uint64, error) {
	js, err := listJournals(dir)
	if err != nil {
		return seq, err
	}
	for k, jf := range js {
		stopAt, err := replayFile(jf.path, &seq, fn)
		if err != nil {
			return seq, err
		}
		if stopAt < 0 {
			continue
		}
		if err := os.Truncate(jf.path, stopAt); err != nil {
			return seq, fmt.Errorf("truncate journal: %w", err)
		}
		for _, later := range js[k+1:] {
			if err := os.Remove(later.path); err != nil {
				return seq, fmt.Errorf("remove journal: %w", err)
			}
		}
		return seq, nil
	}
	return seq, nil
}

// replayFile returns the offset to truncate at, or -1 when the file is
// whole and contiguous.
func replayFile(path string, seq *uint64, fn func(*iotkv.Change, bool)) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return -1, fmt.Errorf("open journal: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	var off int64
	for {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			if len(line) == 0 {
				return -1, nil
			}
			return off, nil // torn last line
		}
		if err != nil {
			return -1, fmt.Errorf("read journal: %w", err)
		}
		var c iotkv.Change
		if json.Unmarshal(line, &c) != nil || c.Validate() != nil {
			return off, nil
		}
		switch {
		case c.Seq <= *seq:
			fn(&c, false)
		case c.Seq == *seq+1:
			*seq = c.Seq
			fn(&c, true)
		default:
			return off, nil
		}
		off += int64(len(line))
	}
}
