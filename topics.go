package iotkv

import "strings"

// Topic prefixes.
const (
	DevicesPrefix = "iotkv/v1/devices/"
	BackupPrefix  = "iotkv/v1/backup/"
)

// Topic kinds under a device's namespace.
const (
	TopicBatch  = "batch"
	TopicKV     = "kv"
	TopicAck    = "status/ack"
	TopicError  = "status/error"
	TopicStatus = "status"
)

// BatchTopic is where device d publishes batches.
func BatchTopic(d string) string { return DevicesPrefix + d + "/batch" }

// KVTopic is where device d puts (JSON payload) or deletes (empty payload) key.
func KVTopic(d, key string) string { return DevicesPrefix + d + "/kv/" + key }

// AckTopic carries the retained {"seq":N} of device d.
func AckTopic(d string) string { return DevicesPrefix + d + "/status/ack" }

// ErrorTopic carries rejections for device d.
func ErrorTopic(d string) string { return DevicesPrefix + d + "/status/error" }

// DeviceNamespace is the topic prefix device d owns.
func DeviceNamespace(d string) string { return DevicesPrefix + d + "/" }

// DeviceTopic is a parsed topic under iotkv/v1/devices/.
type DeviceTopic struct {
	Device string
	Kind   string // TopicBatch, TopicKV, TopicAck, TopicError, or "" for anything else
	Key    string // for TopicKV
}

// ParseDeviceTopic splits a topic name under iotkv/v1/devices/. ok is false
// when the topic is not under that prefix or names no valid device.
func ParseDeviceTopic(topic string) (t DeviceTopic, ok bool) {
	rest, found := strings.CutPrefix(topic, DevicesPrefix)
	if !found {
		return t, false
	}
	dev, sub, found := strings.Cut(rest, "/")
	if !found || ValidateName(dev) != nil {
		return t, false
	}
	t.Device = dev
	switch {
	case sub == TopicBatch:
		t.Kind = TopicBatch
	case strings.HasPrefix(sub, "kv/"):
		t.Kind, t.Key = TopicKV, sub[len("kv/"):]
	case sub == TopicAck:
		t.Kind = TopicAck
	case sub == TopicError:
		t.Kind = TopicError
	}
	return t, true
}

// AckMessage is the retained payload on status/ack.
type AckMessage struct {
	// Seq is the device's last applied and durable seq.
	Seq uint64 `json:"seq"`
	// Refused lists the device's most recent refused batches (at most
	// MaxRefusals, oldest first; a seq leaves the list when a batch under
	// it is applied). A device that missed a status/error (its session
	// dropped) learns here that a seq this ack covers was refused, not
	// applied.
	Refused []Refusal `json:"refused,omitempty"`
}

// Refusal is one refused batch in a status/ack.
type Refusal struct {
	Seq  uint64 `json:"seq"`
	Code string `json:"code"`
}

// MaxRefusals is how many refused batches a status/ack repeats. A device
// keeps at most this many batches in flight, so every refusal it has not
// yet seen is still listed in the newest status/ack.
const MaxRefusals = 32

// ErrorMessage is the payload on status/error.
type ErrorMessage struct {
	Seq     uint64 `json:"seq"`
	Code    string `json:"code"`
	Message string `json:"message"`
}
