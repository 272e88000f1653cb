package iotkv

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// The backup stream of edge E lives under iotkv/v1/backup/E/. Every message
// names the edge's incarnation (a random id made when its store was
// created) and an explicit change-seq range, so the master can tell a gap,
// a duplicate and a rebuilt edge apart.
//
//	changes   edge → master  BackupChanges: changes From..To, contiguous
//	snapshot  edge → master  BackupSnapshotPart: a full state at Seq, in parts
//	hello     edge → master  BackupHello, every second: where the edge is
//	request   master → edge  BackupRequest: send everything after After
//	confirm   master → edge  BackupConfirm: durable up to Seq (or snapshot part)
//
// The edge publishes through the broker's inline client, which fans out at
// QoS 0; the master finds a lost message by its seq range and asks again.
const (
	BackupKindChanges  = "changes"
	BackupKindSnapshot = "snapshot"
	BackupKindHello    = "hello"
	BackupKindRequest  = "request"
	BackupKindConfirm  = "confirm"
)

// BackupTopic is the topic of kind for edge.
func BackupTopic(edge, kind string) string { return BackupPrefix + edge + "/" + kind }

// ParseBackupTopic splits iotkv/v1/backup/{edge}/{kind}.
func ParseBackupTopic(topic string) (edge, kind string, ok bool) {
	rest, found := strings.CutPrefix(topic, BackupPrefix)
	if !found {
		return "", "", false
	}
	edge, kind, found = strings.Cut(rest, "/")
	if !found || ValidateName(edge) != nil || strings.Contains(kind, "/") {
		return "", "", false
	}
	return edge, kind, true
}

// Change is one entry of an edge's change log: the backup stream's unit.
// Seq (cseq) is edge-wide and gap-free; DeviceSeq is the device batch seq
// that made it (0 for REST writes).
type Change struct {
	Seq       uint64          `json:"cseq"`
	Device    string          `json:"device"`
	Key       string          `json:"key"`
	Op        string          `json:"op"`
	Value     json.RawMessage `json:"value,omitempty"`
	TS        *int64          `json:"ts,omitempty"`
	UpdatedAt int64           `json:"updated_at"`
	DeviceSeq uint64          `json:"seq,omitempty"`
}

// Validate checks a change received from the network or read from disk.
func (c *Change) Validate() error {
	if c.Seq == 0 {
		return errors.New("change: cseq must be positive")
	}
	if err := ValidateName(c.Device); err != nil {
		return fmt.Errorf("change %d: device: %w", c.Seq, err)
	}
	if err := validBackupKey(c.Key); err != nil {
		return fmt.Errorf("change %d: %w", c.Seq, err)
	}
	switch c.Op {
	case OpPut:
		if len(c.Value) == 0 || !json.Valid(c.Value) {
			return fmt.Errorf("change %d: put without a valid JSON value", c.Seq)
		}
	case OpDel:
		if len(c.Value) != 0 {
			return fmt.Errorf("change %d: del carries a value", c.Seq)
		}
	default:
		return fmt.Errorf("change %d: unknown op %q", c.Seq, c.Op)
	}
	return nil
}

// validBackupKey is looser than Limits.ValidateKey: an edge may run with
// larger limits than the defaults, and the master must keep what it got.
func validBackupKey(k string) error {
	if k == "" || len(k) > 64<<10 || !utf8.ValidString(k) || strings.IndexByte(k, 0) >= 0 {
		return errors.New("key: empty, too long, not UTF-8 or holds NUL")
	}
	return nil
}

// BackupChanges carries changes From..To of an edge, one per seq. On the
// wire Changes are raw JSON objects, so the master can journal them as
// received.
type BackupChanges struct {
	Edge    string            `json:"edge"`
	Inc     string            `json:"inc"`
	From    uint64            `json:"from"`
	To      uint64            `json:"to"`
	Changes []json.RawMessage `json:"changes"`
}

// DecodeBackupChanges parses and checks a changes message; it returns the
// parsed changes next to the raw ones.
func DecodeBackupChanges(payload []byte) (BackupChanges, []Change, error) {
	var m BackupChanges
	if err := json.Unmarshal(payload, &m); err != nil {
		return m, nil, fmt.Errorf("backup changes: %w", err)
	}
	if err := ValidateName(m.Edge); err != nil {
		return m, nil, fmt.Errorf("backup changes: edge: %w", err)
	}
	if m.Inc == "" {
		return m, nil, errors.New("backup changes: no incarnation")
	}
	if m.From == 0 || m.To < m.From || uint64(len(m.Changes)) != m.To-m.From+1 {
		return m, nil, fmt.Errorf("backup changes: range %d..%d does not match %d changes", m.From, m.To, len(m.Changes))
	}
	out := make([]Change, len(m.Changes))
	for i, raw := range m.Changes {
		if err := json.Unmarshal(raw, &out[i]); err != nil {
			return m, nil, fmt.Errorf("backup changes: change %d: %w", i, err)
		}
		if out[i].Seq != m.From+uint64(i) {
			return m, nil, fmt.Errorf("backup changes: change %d has cseq %d, want %d", i, out[i].Seq, m.From+uint64(i))
		}
		if err := out[i].Validate(); err != nil {
			return m, nil, fmt.Errorf("backup changes: %w", err)
		}
	}
	return m, out, nil
}

// BackupEntry is one key of a full state, as latest.json holds it.
type BackupEntry struct {
	Device string          `json:"device"`
	Key    string          `json:"key"`
	Value  json.RawMessage `json:"value"`
	TS     *int64          `json:"ts"`
}

// Validate checks an entry read from the network or a file.
func (e *BackupEntry) Validate() error {
	if err := ValidateName(e.Device); err != nil {
		return fmt.Errorf("entry: device: %w", err)
	}
	if err := validBackupKey(e.Key); err != nil {
		return fmt.Errorf("entry %s: %w", e.Device, err)
	}
	if len(e.Value) == 0 || !json.Valid(e.Value) {
		return fmt.Errorf("entry %s/%s: value is not valid JSON", e.Device, e.Key)
	}
	return nil
}

// CompareEntries orders entries by device, then key: the order of
// latest.json and of snapshot parts.
func CompareEntries(dev1, key1, dev2, key2 string) int {
	if c := strings.Compare(dev1, dev2); c != 0 {
		return c
	}
	return strings.Compare(key1, key2)
}

// DeviceSeq is a device's last applied batch seq, which a restored edge
// needs so that resent batches are acknowledged and not applied twice.
type DeviceSeq struct {
	Device  string `json:"device"`
	LastSeq uint64 `json:"last_seq"`
}

// BackupSnapshotPart is one part of a full state sent when the master is
// too far behind (or on another incarnation). Parts are numbered from 0;
// devices come before entries, entries in CompareEntries order. After the
// Last part the edge streams changes from Seq+1.
type BackupSnapshotPart struct {
	Edge    string        `json:"edge"`
	Inc     string        `json:"inc"`
	Snap    string        `json:"snap"` // id of this transfer
	Seq     uint64        `json:"seq"`  // the change seq the state is at
	Part    int           `json:"part"`
	Last    bool          `json:"last,omitempty"`
	Devices []DeviceSeq   `json:"devices,omitempty"`
	Entries []BackupEntry `json:"entries,omitempty"`
}

// DecodeBackupSnapshotPart parses and checks a snapshot part.
func DecodeBackupSnapshotPart(payload []byte) (BackupSnapshotPart, error) {
	var m BackupSnapshotPart
	if err := json.Unmarshal(payload, &m); err != nil {
		return m, fmt.Errorf("backup snapshot: %w", err)
	}
	if err := ValidateName(m.Edge); err != nil {
		return m, fmt.Errorf("backup snapshot: edge: %w", err)
	}
	if m.Inc == "" || m.Snap == "" || m.Part < 0 {
		return m, errors.New("backup snapshot: incarnation, snap id and part are required")
	}
	for _, d := range m.Devices {
		if err := ValidateName(d.Device); err != nil {
			return m, fmt.Errorf("backup snapshot: device: %w", err)
		}
	}
	for i := range m.Entries {
		if err := m.Entries[i].Validate(); err != nil {
			return m, fmt.Errorf("backup snapshot: %w", err)
		}
		if i > 0 && CompareEntries(m.Entries[i-1].Device, m.Entries[i-1].Key, m.Entries[i].Device, m.Entries[i].Key) >= 0 {
			return m, fmt.Errorf("backup snapshot: entries out of order at %d", i)
		}
	}
	return m, nil
}

// BackupHello tells the master where the edge is: Seq is its last change,
// First the oldest change it still has (Seq+1 when none), Streaming whether
// a master session is open.
type BackupHello struct {
	Edge      string `json:"edge"`
	Inc       string `json:"inc"`
	Seq       uint64 `json:"seq"`
	First     uint64 `json:"first"`
	Streaming bool   `json:"streaming"`
}

// DecodeBackupHello parses a hello.
func DecodeBackupHello(payload []byte) (BackupHello, error) {
	var m BackupHello
	if err := json.Unmarshal(payload, &m); err != nil {
		return m, fmt.Errorf("backup hello: %w", err)
	}
	if err := ValidateName(m.Edge); err != nil {
		return m, fmt.Errorf("backup hello: edge: %w", err)
	}
	if m.Inc == "" {
		return m, errors.New("backup hello: no incarnation")
	}
	return m, nil
}

// BackupRequest asks the edge for every change after After, on
// incarnation Inc ("" when the master has none). The edge answers with a
// snapshot when it no longer has After+1 or Inc is not its own. It also
// confirms After.
type BackupRequest struct {
	Inc   string `json:"inc"`
	After uint64 `json:"after"`
}

// BackupConfirm tells the edge the master has made durable every change
// up to Seq, or (Snap set) received snapshot parts up to Part.
type BackupConfirm struct {
	Inc  string `json:"inc"`
	Seq  uint64 `json:"seq,omitempty"`
	Snap string `json:"snap,omitempty"`
	Part int    `json:"part,omitempty"`
}
