package edge

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
