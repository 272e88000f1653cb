package broker

import "github.com/iotkv/iotkv"

// Write is a device publish on its batch or kv topic, after login and ACL.
type Write struct {
	Device  string            // the authenticated username (= certificate CN)
	Topic   iotkv.DeviceTopic // parsed topic; Kind is TopicBatch or TopicKV
	Payload []byte
	Retain  bool
}

// Result is the outcome of a Write.
type Result struct {
	Seq uint64 // the batch seq when known, for status/error
	// Err is nil when the write is durable (or was a redelivery already
	// applied). An *iotkv.Error is a refusal: nothing was applied. Any
	// other error means the edge could not make it durable: no PUBACK is
	// sent, so the client sends it again.
	Err error
}

// Ingest applies device writes. Submit is called from the publishing
// client's goroutine, in the order the client sent its publishes; it must
// not block for long and must call done exactly once, in submission order
// for one client, when the write is durable or refused.
type Ingest interface {
	Submit(w Write, done func(Result))
}
