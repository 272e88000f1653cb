// Package iotkv holds the domain of iotkv, a secure, distributed key-value
// database for IoT: batches and ops as devices send them, records as the edge
// stores them, the rules for keys and values, MQTT topic names, roles and
// error codes. It imports only the standard library, so every other package
// (including the slim device client) can share it.
//
// The packages around it each own one concern:
//
//	cmd/iotkv, cmd/iotkv-device   flags and wiring only
//	edge     Pebble store, group commit, backup producer, restore
//	master   backup consumer, JSON journals and snapshots
//	device   client library: durable queue, batching, end-to-end acks
//	broker   embedded mochi-mqtt: TLS listener, auth, ACL, limits
//	rest     chi handlers, auth middleware, OpenAPI
//	accounts accounts file, bcrypt, credential cache, throttling
//	certs    the PKI
package iotkv
