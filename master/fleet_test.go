package master

import (
	"fmt"
	"testing"
)

// The fleet directory pages by device id and names, for a device found on
// two edges, the one that wrote it last.
func TestFleetDevicesPagesByDeviceAndPicksTheEdgeThatWroteLast(t *testing.T) {
	m := &Master{follow: map[string]*follower{}}
	add := func(id string, devs map[string]deviceInfo) {
		m.follow[id] = &follower{id: id, devices: devs}
		m.order = append(m.order, id)
	}
	add("e1", map[string]deviceInfo{"dev-a": {lastSeq: 3, lastWrite: 100}, "dev-moved": {lastSeq: 9, lastWrite: 50}, "other": {lastSeq: 1}})
	add("e2", map[string]deviceInfo{"dev-b": {lastSeq: 4, lastWrite: 200}, "dev-moved": {lastSeq: 2, lastWrite: 70}})

	var got []string
	after := ""
	for page := 0; ; page++ {
		items, next := m.FleetDevices("dev-", after, 2)
		for _, it := range items {
			got = append(got, fmt.Sprintf("%s@%s/%d/%d", it.Device, it.Edge, it.LastSeq, it.LastWrite))
		}
		if next == "" {
			break
		}
		if page > 3 {
			t.Fatal("pagination does not end")
		}
		after = next
	}
	want := "[dev-a@e1/3/100 dev-b@e2/4/200 dev-moved@e2/2/70]"
	if fmt.Sprint(got) != want {
		t.Fatalf("pages: %v, want %v", got, want)
	}
	if items, next := m.FleetDevices("", "", 1000); len(items) != 4 || next != "" {
		t.Fatalf("everything in one page: %v next %q", items, next)
	}
	if items, _ := m.FleetDevices("nope", "", 10); len(items) != 0 {
		t.Fatalf("no device has prefix nope: %v", items)
	}
}
