package edge

import "github.com/cockroachdb/pebble/v2/vfs"

// StoreUsage opens the store in dir on fs, and returns the counters it
// holds and a recount of its records.
func StoreUsage(dir string, fs vfs.FS) (stored, counted map[string][2]int64, err error) {
	s, err := OpenStore(dir, StoreOptions{FS: fs})
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	if stored, err = storedUsage(s); err != nil {
		return nil, nil, err
	}
	counts, err := s.countUsage()
	counted = map[string][2]int64{}
	for d, u := range counts {
		counted[d] = [2]int64{u.keys, u.bytes}
	}
	return stored, counted, err
}

// CountUsage recounts every device's keys and bytes from the records an
// open edge holds (what the counters must equal).
func CountUsage(e *Edge) (map[string][2]int64, error) {
	counts, err := e.store.countUsage()
	if err != nil {
		return nil, err
	}
	out := make(map[string][2]int64, len(counts))
	for d, u := range counts {
		out[d] = [2]int64{u.keys, u.bytes}
	}
	return out, nil
}

// StoredUsage returns the counters the store holds for every device.
func StoredUsage(e *Edge) (map[string][2]int64, error) { return storedUsage(e.store) }

func storedUsage(s *Store) (map[string][2]int64, error) {
	devs, err := s.Devices()
	if err != nil {
		return nil, err
	}
	out := map[string][2]int64{}
	for _, d := range devs {
		if d.Keys != 0 || d.Bytes != 0 {
			out[d.Device] = [2]int64{d.Keys, d.Bytes}
		}
	}
	return out, nil
}
