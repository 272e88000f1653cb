package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/atomicfile"
)

// RestoreOptions configure Restore.
type RestoreOptions struct {
	URL      string // the master, https://host:9443
	ID       string // this edge's id: the backup to fetch
	Name     string // account name; default ID
	Password string
	TLSFiles certs.Paths // the edge's own certificate, presented to the master
	DataDir  string
	// Force replaces a data dir that is not empty.
	Force  bool
	Logger *slog.Logger
	// ProgressEvery is the interval of progress lines; default 1s.
	ProgressEvery time.Duration
	// IdleTimeout fails a fetch from the master that receives nothing for
	// that long (headers or body); default 1m.
	IdleTimeout time.Duration
	// Source, when set, opens the backup document instead of fetching it
	// from URL (--restore-from s3://...: read from object storage).
	Source func(ctx context.Context) (io.ReadCloser, error)
}

// Restore fills an empty DataDir with the edge's backup from the master:
// every key the master has, and each device's last applied seq so that
// batches devices send again are acknowledged and not applied twice. It
// writes into DataDir+".restore" and renames it into place at the end, so
// an interrupted restore leaves DataDir untouched and can be run again.
// The restored store gets a new incarnation: the master resyncs from it.
func Restore(ctx context.Context, o RestoreOptions) error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Name == "" {
		o.Name = o.ID
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = time.Minute
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = time.Second
	}
	log := o.Logger.With("edge", o.ID, "from", o.URL)
	if err := iotkv.ValidateName(o.ID); err != nil {
		return fmt.Errorf("restore: edge id: %w", err)
	}
	empty, err := dirEmpty(o.DataDir)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if !empty && !o.Force {
		return fmt.Errorf("restore: data dir %s is not empty; refusing to overwrite it (use --force)", o.DataDir)
	}
	var body io.ReadCloser
	if o.Source != nil {
		log.Info("restore: reading backup")
		body, err = o.Source(ctx)
	} else {
		body, err = fetchBackup(ctx, o, log)
	}
	if err != nil {
		return err
	}
	defer body.Close()

	tmp := filepath.Clean(o.DataDir) + ".restore"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("restore: remove leftover %s: %w", tmp, err)
	}
	store, err := OpenStore(tmp, StoreOptions{Logger: log})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	counted := &countingReader{r: body}
	start := time.Now()
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	var entries atomic.Int64
	go func() {
		defer close(progressDone)
		t := time.NewTicker(o.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				log.Info("restore: progress", "keys", entries.Load(), "mib", counted.n.Load()>>20,
					"keys_per_s", int(float64(entries.Load())/time.Since(start).Seconds()))
			}
		}
	}()
	hdr, devices, err := LoadBackup(counted, o.ID, store, func(n int) { entries.Store(int64(n)) })
	close(stopProgress)
	<-progressDone
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// A failed restore leaves nothing behind: not the half-written
		// store, and not DataDir, which it never touched.
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("restore: %w (the data dir was not touched; run again)", err)
	}
	if !empty {
		if err := os.RemoveAll(o.DataDir); err != nil {
			return fmt.Errorf("restore: clear %s: %w", o.DataDir, err)
		}
	} else if err := os.Remove(o.DataDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("restore: %w", err)
	}
	if err := os.Rename(tmp, o.DataDir); err != nil {
		return fmt.Errorf("restore: move into place: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(filepath.Clean(o.DataDir))); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	log.Info("restore: done", "keys", entries.Load(), "devices", devices, "seq", hdr.Seq,
		"taken_at", hdr.TakenAt, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// LoadBackup writes a backup document (the master's GET /v1/backups/{edge})
// into store: records and devices' last seqs, in batches, the last one
// synced. It refuses a document of another edge.
func LoadBackup(r io.Reader, id string, store *Store, progress func(entries int)) (iotkv.BackupHeader, int, error) {
	br, err := iotkv.NewBackupReader(r)
	if err != nil {
		return iotkv.BackupHeader{}, 0, err
	}
	var updatedAt int64
	batch := store.db.NewBatch()
	defer func() { batch.Close() }()
	devices := 0
	commit := func(sync bool) error {
		opt := pebble.NoSync
		if sync {
			opt = pebble.Sync
		}
		if err := batch.Commit(opt); err != nil {
			return fmt.Errorf("write store: %w", err)
		}
		batch.Close()
		batch = store.db.NewBatch()
		return nil
	}
	for {
		kind, err := br.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return br.Header, devices, err
		}
		if br.Header.Edge != "" && br.Header.Edge != id {
			return br.Header, devices, fmt.Errorf("the backup is of edge %q, not %q", br.Header.Edge, id)
		}
		switch kind {
		case iotkv.BackupItemDevice:
			meta, _ := json.Marshal(deviceMeta{LastSeq: br.Device.LastSeq})
			_ = batch.Set(deviceKey(br.Device.Device), meta, nil)
			devices++
		case iotkv.BackupItemEntry:
			if updatedAt == 0 {
				updatedAt = takenAtMillis(br.Header.TakenAt)
			}
			e := &br.Entry
			enc, _ := json.Marshal(storedRecord{Value: e.Value, TS: e.TS, UpdatedAt: updatedAt})
			_ = batch.Set(recordKey(e.Device, e.Key), enc, nil)
			if n := br.Entries(); n%4096 == 0 {
				if progress != nil {
					progress(n)
				}
			}
		}
		if batch.Len() > 4<<20 {
			if err := commit(false); err != nil {
				return br.Header, devices, err
			}
		}
	}
	if br.Header.Edge != id {
		return br.Header, devices, fmt.Errorf("the backup is of edge %q, not %q", br.Header.Edge, id)
	}
	if progress != nil {
		progress(br.Entries())
	}
	return br.Header, devices, commit(true)
}

// fetchBackup GETs the backup from the master over HTTPS.
func fetchBackup(ctx context.Context, o RestoreOptions, log *slog.Logger) (io.ReadCloser, error) {
	tc, err := certs.ClientConfig(o.TLSFiles)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	u, err := url.Parse(strings.TrimRight(o.URL, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("restore: --restore-from %q: want https://host:port", o.URL)
	}
	u = u.JoinPath("v1", "backups", o.ID)
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("restore: %w", err)
	}
	req.SetBasicAuth(o.Name, o.Password)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ResponseHeaderTimeout: o.IdleTimeout}}
	log.Info("restore: fetching backup", "url", u.String())
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("restore: fetch %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("restore: %s answered %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	return newIdleBody(resp.Body, o.IdleTimeout, cancel), nil
}

// idleBody fails the fetch when no byte arrives for idle: a master that
// stalls in the middle of a backup would otherwise hold the restore (and
// the edge's start) forever.
type idleBody struct {
	rc     io.ReadCloser
	idle   time.Duration
	timer  *time.Timer
	cancel context.CancelFunc
	fired  atomic.Bool
}

func newIdleBody(rc io.ReadCloser, idle time.Duration, cancel context.CancelFunc) *idleBody {
	b := &idleBody{rc: rc, idle: idle, cancel: cancel}
	b.timer = time.AfterFunc(idle, func() {
		b.fired.Store(true)
		cancel()
	})
	return b
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	if err != nil && b.fired.Load() {
		// Not wrapped: after the cancel the transport may answer io.EOF,
		// and a stalled master must never read as the end of a document.
		err = fmt.Errorf("no data from the master for %v (fetch cancelled: %v)", b.idle, err)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	b.cancel()
	return b.rc.Close()
}

func takenAtMillis(s string) int64 {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UnixMilli()
	}
	return time.Now().UnixMilli()
}

func dirEmpty(dir string) (bool, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return len(ents) == 0, nil
}

type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
