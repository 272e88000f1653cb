package bench

import (
	"os"
	"strings"
	"testing"
)

// The README's performance table is what the committed results-full.json
// produces: nobody types a figure into it. After a full run, `make bench`
// rewrites it (`bin/iotkv-bench --readme README.md`).
func TestREADMEPerformanceTableIsGeneratedFromTheJSON(t *testing.T) {
	data, err := os.ReadFile("results/results-full.json")
	if err != nil {
		t.Fatal(err)
	}
	want, err := ReadmeTable(data)
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadmeSection(readme)
	if err != nil {
		t.Fatal(err)
	}
	if got != strings.TrimSpace(want) {
		t.Fatalf("README.md's performance table differs from what bench/results/results-full.json produces; run `go build -o bin/iotkv-bench ./bench/cmd/iotkv-bench && bin/iotkv-bench --readme README.md`.\nREADME:\n%s\n\nfrom the JSON:\n%s", got, want)
	}
	// Every aim of the run is in the table, with its measured figure.
	for _, line := range strings.Split(want, "\n") {
		if strings.HasPrefix(line, "| ") && !strings.Contains(got, line) {
			t.Errorf("row missing from the README: %s", line)
		}
	}
	// UpdateReadme is how make bench rewrites it: idempotent.
	again, err := UpdateReadme(readme, want)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(readme) {
		t.Error("UpdateReadme of an up-to-date README changed it")
	}
}
