// Package chaos is iotkv's fault harness: it runs the real iotkv
// binaries (edge, master) and device processes (cmd/chaos-writer, the
// device library behind a process that prints every promise it makes) on
// loopback, injects faults, and verifies the promise of iotkv: nothing a
// device's Put accepted is lost, nothing is applied twice.
//
// Scenarios (scenarios.go, diskfault.go): kill -9 of the edge under load,
// of device processes mid-batch, of the master (a reader checks that
// latest.json parses at every instant); network faults through
// internal/faultproxy on the device and master links; fsync errors and a
// full disk under the edge's WAL (Pebble errorfs over a crashable memory
// FS, then a power loss that keeps only synced data, then a restart); clock
// skew; the edge's disk lost and restored from the master.
//
// Verification (verify.go): the ledger holds, per device and key, the
// newest op whose Put returned nil; the edge must hold it (or a later op of
// the same device) with the ts given. Applied twice: every op's number is
// unique per device, so it may appear once in the edge's change log (read
// from the stopped edge's store); and on the edge a record of a lower batch
// seq never carries a higher change seq than one of a higher batch seq.
// With a master, latest.json must equal the edge after catch-up.
//
// TestChaos runs 2-3 cycles per scenario (in `make test`); IOTKV_CHAOS=full
// runs the cycles of the issue and IOTKV_CHAOS_OUT=FILE writes the table
// (`make chaos` writes bench/results/chaos.md). Linux only: children run in
// their own process group with Pdeathsig, so they die with the test binary.
package chaos
