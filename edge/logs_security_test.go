package edge_test

import (
	"strings"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
)

// Keys never appear in the edge's logs, not even in the lines about
// refused writes that name them to the device.
func TestKeysStayOutOfLogs(t *testing.T) {
	r := shared
	c := r.v3(t, "logs")
	errs, _ := rigSubscribe3(t, c, iotkv.ErrorTopic("logs"))
	rigPublish3(t, c, iotkv.BatchTopic("logs"), `{"seq":1,"ops":[{"op":"del","key":"secret-key-a","value":1}]}`)
	if m := rigNext(t, errs, "status/error"); !strings.Contains(string(m.Payload()), "secret-key-a") {
		t.Fatalf("the device's status/error should name its key: %s", m.Payload())
	}
	rigPublish3(t, c, iotkv.KVTopic("logs", "secret-key-b"), "not json")
	rigNext(t, errs, "status/error")
	// A foreign kv topic: refused by the ACL (v3.1.1: disconnected).
	tok := c.Publish(iotkv.KVTopic("ref-a", "secret-key-c"), 1, false, "1")
	tok.WaitTimeout(2 * time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(r.logs.String(), "mqtt acl denied") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	logs := r.logs.String()
	if !strings.Contains(logs, "device write refused") || !strings.Contains(logs, "mqtt acl denied") {
		t.Fatal("the refusals were not logged at all")
	}
	if strings.Contains(logs, "secret-key") {
		t.Errorf("a key appears in the logs:\n%s", grepLines(logs, "secret-key"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
