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
	Seq uint64 `json:"seq"`
}

// ErrorMessage is the payload on status/error.
type ErrorMessage struct {
	Seq     uint64 `json:"seq"`
	Code    string `json:"code"`
	Message string `json:"message"`
}
