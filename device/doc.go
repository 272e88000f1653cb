// Package device is the iotkv device client: a durable, ordered queue of
// puts and deletes on local disk, and a goroutine that packs them into
// batches, publishes them to an edge over MQTT/TLS and removes them only
// when the edge's retained status/ack says they are applied.
//
// # Guarantees
//
// Put and Delete return once the op is fsync'd in the queue under
// Options.QueueDir; they never wait on the network. Concurrent callers
// share one fsync (group commit). An op leaves the queue only when the edge
// reports, on iotkv/v1/devices/{name}/status/ack, a seq at or above the
// seq of the op's batch: paho's token completing proves nothing (its tokens
// can complete across reconnects without delivery). After every reconnect
// every unacknowledged batch is published again; the edge applies a seq at
// most once. A batch refused on status/error is removed and reported
// (Options.OnReject, the log, Stats.Rejected). A batch's seq is durable
// before the batch is published, so a restart never gives that seq to
// other ops.
//
// Coalescing: an op on a key replaces an earlier op on the same key that
// is not yet in a batch (put 1, put 2 → put 2; put, del → del). The key's
// final state is the same and no other key moves, so the final state on
// the edge is unchanged. Ops already in a batch are never touched.
//
// Seq resync: after connecting, a session subscribes to its status topics
// and to a probe topic, publishes a nonce on the probe topic and waits for
// it to come back. The edge sends the retained status/ack right after the
// SUBACK and before it reads the probe, and paho runs our handler in order,
// so when the nonce is back the queue knows the edge's last seq (or that it
// has none). A queue that has never learned it (a new queue dir) forms no
// batch before that. When the edge is ahead of every seq the queue has
// given out (a new or restored queue dir), unacknowledged batches get new
// seqs above the edge's.
//
// # The queue on disk
//
// The queue is a single append-only log file (queue.log) of records, each
// framed by its length and a CRC-32C: ops, batch cuts, acks, rejections
// and seq resyncs. Open replays it through the same functions that change
// the state at run time; a torn or damaged tail is cut off (nothing in it
// was reported durable). When the log has grown past twice the live data
// (and 1 MiB) it is replaced by a snapshot of the live state, written to a
// temp file, fsync'd and renamed, with the directory fsync'd. A flock on
// LOCK keeps a second process out.
//
// Why not an embedded store: the device binary must stay small (max RSS
// near the ~6.5 MB floor of a Go mTLS MQTT client), Pebble is out of the
// question there, and bbolt would add an mmap'd B+tree and two fsyncs per
// transaction (data, then meta page) for what is a FIFO with a key index
// for coalescing. The log needs one write and one fsync per group, keeps
// the whole state in memory (bounded by QueueMaxBytes), and its recovery
// rule (keep the longest valid prefix) is a few lines that a crash test
// exercises directly. QueueMaxBytes bounds the live ops; the file can be
// up to about three times that between compactions.
//
// # Goroutines and locks
//
// Open starts one goroutine, run, which owns the connection and the batch
// state; it starts a dial goroutine per connection attempt and waits for
// them before it returns. paho's handlers only append to an event list
// (Client.evMu) and signal run. Close cancels run, waits for it, then
// closes the queue. Lock order: queue.fileMu before queue.mu; Client.evMu
// is never held with another lock.
package device
