package broker

import (
	"testing"

	"github.com/iotkv/iotkv"
)

// An edge that dials a master may publish only its own stream and read
// only its own requests and confirms.
func TestAllowEdgeKeepsAnEdgeToItsOwnStream(t *testing.T) {
	cases := []struct {
		user, topic string
		write, want bool
	}{
		{"e1", iotkv.BackupTopic("e1", iotkv.BackupKindChanges), true, true},
		{"e1", iotkv.BackupTopic("e1", iotkv.BackupKindSnapshot), true, true},
		{"e1", iotkv.BackupTopic("e1", iotkv.BackupKindHello), true, true},
		{"e1", iotkv.BackupTopic("e1", iotkv.BackupKindRequest), false, true},
		{"e1", iotkv.BackupTopic("e1", iotkv.BackupKindConfirm), false, true},
		{"e2", iotkv.BackupTopic("e1", iotkv.BackupKindChanges), true, false},  // another edge's stream
		{"e2", iotkv.BackupTopic("e1", iotkv.BackupKindRequest), false, false}, // another edge's requests
		{"e1", iotkv.BackupTopic("e1", iotkv.BackupKindConfirm), true, false},  // only the master confirms
		{"e1", iotkv.BackupTopic("e1", iotkv.BackupKindChanges), false, false}, // nor reads its own stream back
		{"e1", iotkv.BackupPrefix + "#", false, false},
		{"e1", iotkv.BackupPrefix + "+/changes", false, false},
		{"e1", iotkv.BatchTopic("e1"), true, false},
		{"e1", iotkv.BackupPrefix + "e1/changes/x", true, false},
	}
	for _, c := range cases {
		if got := allowEdge(c.user, c.topic, c.write); got != c.want {
			t.Errorf("allowEdge(%q, %q, write=%v) = %v, want %v", c.user, c.topic, c.write, got, c.want)
		}
	}
}
