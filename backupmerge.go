package iotkv

import (
	"encoding/json"
	"sort"
	"strings"
)

// OverlayEntry is a key changed after a full state: a put, or a delete
// (Value nil).
type OverlayEntry struct {
	Device, Key string
	Value       json.RawMessage
	TS          *int64
}

// Overlay collects changes laid over a full state: the last change of
// every key they touch and the devices' last batch seqs. The zero value is
// empty and ready.
type Overlay struct {
	keys    map[string]OverlayEntry
	devices map[string]uint64
}

// Apply records a change (later changes win).
func (o *Overlay) Apply(c *Change) {
	if o.keys == nil {
		o.keys, o.devices = map[string]OverlayEntry{}, map[string]uint64{}
	}
	e := OverlayEntry{Device: c.Device, Key: c.Key, TS: c.TS}
	if c.Op == OpPut {
		e.Value = c.Value
	}
	o.keys[c.Device+"\x00"+c.Key] = e
	if c.DeviceSeq > o.devices[c.Device] {
		o.devices[c.Device] = c.DeviceSeq
	}
}

// Set records the last change of a key as an entry (Value nil: deleted).
func (o *Overlay) Set(e OverlayEntry) {
	if o.keys == nil {
		o.keys, o.devices = map[string]OverlayEntry{}, map[string]uint64{}
	}
	o.keys[e.Device+"\x00"+e.Key] = e
}

// Len is the number of keys touched.
func (o *Overlay) Len() int { return len(o.keys) }

// Devices returns the devices' last seqs seen in the changes.
func (o *Overlay) Devices() map[string]uint64 { return o.devices }

// Sorted returns the touched keys in CompareEntries order (the NUL
// separator sorts before any byte of a key, so string order matches).
func (o *Overlay) Sorted() []OverlayEntry {
	ks := make([]string, 0, len(o.keys))
	for k := range o.keys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	out := make([]OverlayEntry, len(ks))
	for i, k := range ks {
		out[i] = o.keys[k]
	}
	return out
}

// CombineOverlays lays newer over older (both sorted).
func CombineOverlays(older, newer []OverlayEntry) []OverlayEntry {
	if len(older) == 0 {
		return newer
	}
	out := make([]OverlayEntry, 0, len(older)+len(newer))
	i, j := 0, 0
	for i < len(older) || j < len(newer) {
		c := 0
		switch {
		case j == len(newer):
			c = -1
		case i == len(older):
			c = 1
		default:
			c = CompareEntries(older[i].Device, older[i].Key, newer[j].Device, newer[j].Key)
		}
		switch {
		case c < 0:
			out = append(out, older[i])
			i++
		case c > 0:
			out = append(out, newer[j])
			j++
		default:
			out = append(out, newer[j])
			i++
			j++
		}
	}
	return out
}

// DeviceList turns devices' last seqs into the sorted list a backup
// document carries.
func DeviceList(devices map[string]uint64) []DeviceSeq {
	out := make([]DeviceSeq, 0, len(devices))
	for d, s := range devices {
		out = append(out, DeviceSeq{Device: d, LastSeq: s})
	}
	sort.Slice(out, func(i, j int) bool { return strings.Compare(out[i].Device, out[j].Device) < 0 })
	return out
}

// MergeEntries writes to bw the entries of a full state (next returns them
// in CompareEntries order, then nil; a nil next is an empty state) with
// overlay (sorted) laid over them: the snapshot-plus-changes merge of every
// backup store.
func MergeEntries(bw *BackupWriter, next func() (*BackupEntry, error), overlay []OverlayEntry) error {
	if next == nil {
		next = func() (*BackupEntry, error) { return nil, nil }
	}
	b, err := next()
	if err != nil {
		return err
	}
	i := 0
	for b != nil || i < len(overlay) {
		c := 1
		switch {
		case b == nil:
		case i == len(overlay):
			c = -1
		default:
			c = CompareEntries(b.Device, b.Key, overlay[i].Device, overlay[i].Key)
		}
		if c < 0 {
			if err := bw.Entry(b); err != nil {
				return err
			}
		} else {
			if o := overlay[i]; o.Value != nil {
				if err := bw.Entry(&BackupEntry{Device: o.Device, Key: o.Key, Value: o.Value, TS: o.TS}); err != nil {
					return err
				}
			}
			i++
		}
		if c <= 0 {
			if b, err = next(); err != nil {
				return err
			}
		}
	}
	return nil
}
