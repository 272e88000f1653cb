package edge

// DiskUsage is the store's size on disk in bytes (sstables, WAL, manifest),
// as Pebble counts it.
func (s *Store) DiskUsage() uint64 { return s.db.Metrics().DiskSpaceUsage() }
