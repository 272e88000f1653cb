package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Report is everything a run measured.
type Report struct {
	mu           sync.Mutex
	Mode         string     `json:"mode"`
	Date         string     `json:"date"`
	Machine      Machine    `json:"machine"`
	Sections     []*Section `json:"scenarios"`
	TotalSeconds float64    `json:"total_seconds"`
}

// Machine names where the numbers come from.
type Machine struct {
	CPUs   int    `json:"cpus"`
	Model  string `json:"cpu_model"`
	Go     string `json:"go"`
	Commit string `json:"commit"`
	Kernel string `json:"kernel"`
	MemMiB int64  `json:"mem_mib"`
}

// Section is one scenario's results.
type Section struct {
	ID      string         `json:"id"`
	Title   string         `json:"title"`
	Table   [][]string     `json:"table,omitempty"` // first row is the header
	Checks  []Check        `json:"checks,omitempty"`
	Notes   []string       `json:"notes,omitempty"`
	Figures []string       `json:"figures,omitempty"`
	Raw     map[string]any `json:"raw,omitempty"`
	// Rounds is how many times each of the scenario's figures was
	// measured (the median is reported); 0 or 1: once, no spread.
	Rounds int `json:"rounds,omitempty"`
	// Spread is the min–max over the rounds of the figure the
	// scenario's aims are about (set with SetSpread), for the README.
	Spread  string  `json:"spread,omitempty"`
	Skipped string  `json:"skipped,omitempty"`
	Failed  string  `json:"failed,omitempty"`
	Seconds float64 `json:"seconds"`
}

// Check is one aim and what was measured against it.
type Check struct {
	Aim      string  `json:"aim"`
	Measured string  `json:"measured"`
	Value    float64 `json:"value"`
	Pass     bool    `json:"pass"`
}

// NewReport starts a report for this machine.
func NewReport(quick bool) *Report {
	mode := "full"
	if quick {
		mode = "quick"
	}
	return &Report{Mode: mode, Date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), Machine: machine()}
}

// Section adds a scenario's section.
func (r *Report) Section(id, title string) *Section {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &Section{ID: id, Title: title, Raw: map[string]any{}}
	r.Sections = append(r.Sections, s)
	return s
}

// Row appends a table row (the first call sets the header).
func (s *Section) Row(cells ...string) { s.Table = append(s.Table, cells) }

// Note appends a note.
func (s *Section) Note(format string, args ...any) {
	s.Notes = append(s.Notes, fmt.Sprintf(format, args...))
}

// SetSpread records the min–max over the rounds of the scenario's
// headline figure (what, e.g. "edge req/s").
func (s *Section) SetSpread(what string, rounds []float64, format func(float64) string) {
	if len(rounds) < 2 {
		return
	}
	lo, _, hi := minMedMax(rounds)
	s.Spread = what + " " + format(lo) + "–" + format(hi)
}

// Check records an aim: pass says whether value met it.
func (s *Section) Check(aim string, value float64, pass bool, format string, args ...any) {
	s.Checks = append(s.Checks, Check{Aim: aim, Measured: fmt.Sprintf(format, args...), Value: value, Pass: pass})
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				m.Model = strings.TrimSpace(line[strings.IndexByte(line, ':')+1:])
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		_, _ = fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		m.MemMiB = kb >> 10
	}
	if out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
		if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(out) > 0 {
			m.Commit += " (+ uncommitted changes in the tree)"
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// Write writes report.md and results.json (mode-suffixed) into dir.
func (r *Report) Write(dir string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("report json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results-"+r.Mode+".json"), b, 0o644); err != nil {
		return fmt.Errorf("report json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(r.markdown()), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

func (r *Report) markdown() string {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w("# iotkv benchmark report (%s run)\n\n", r.Mode)
	w("- Date: %s\n- Machine: %d × %s, %d MiB RAM, Linux %s (shared with other work: absolute numbers are noisy, ratios are measured in the same run)\n- Go: %s\n- Commit: %s\n",
		r.Date, r.Machine.CPUs, r.Machine.Model, r.Machine.MemMiB, r.Machine.Kernel, r.Machine.Go, r.Machine.Commit)
	if r.TotalSeconds > 0 {
		w("- Wall time of the run: %.0f s\n", r.TotalSeconds)
	}
	w("- Reproduce: `make bench-quick` (CI-sized) or `make bench` (full)\n\n")
	w("## Aims at a glance\n\n| # | aim | measured | verdict |\n| --- | --- | --- | --- |\n")
	for _, s := range r.Sections {
		switch {
		case s.Skipped != "":
			w("| %s | %s | skipped: %s | – |\n", s.ID, s.Title, esc(s.Skipped))
		case s.Failed != "" && len(s.Checks) == 0:
			w("| %s | %s | failed: %s | **FAILED** |\n", s.ID, s.Title, esc(s.Failed))
		}
		for _, c := range s.Checks {
			v := "met"
			if !c.Pass {
				v = "**MISSED**"
			}
			w("| %s | %s | %s | %s |\n", s.ID, esc(c.Aim), esc(c.Measured), v)
		}
	}
	w("\n")
	for _, s := range r.Sections {
		w("## %s. %s\n\n", s.ID, s.Title)
		if s.Skipped != "" {
			w("Skipped: %s\n\n", s.Skipped)
		}
		if s.Failed != "" {
			w("**Failed:** %s\n\n", s.Failed)
		}
		if len(s.Table) > 0 {
			w("| %s |\n|%s\n", strings.Join(s.Table[0], " | "), strings.Repeat(" --- |", len(s.Table[0])))
			for _, row := range s.Table[1:] {
				w("| %s |\n", strings.Join(row, " | "))
			}
			w("\n")
		}
		for _, c := range s.Checks {
			v := "met"
			if !c.Pass {
				v = "**MISSED**"
			}
			w("- Aim: %s — measured %s: %s\n", c.Aim, c.Measured, v)
		}
		if s.Skipped == "" {
			w("- %s\n", s.roundsLine())
		}
		for _, n := range s.Notes {
			w("- %s\n", n)
		}
		for _, f := range s.Figures {
			w("\n![%s](%s)\n", f, f)
		}
		w("\n_(%.0f s)_\n\n", s.Seconds)
	}
	return sb.String()
}

func esc(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

// roundsLine states how often the scenario's figures were measured.
func (s *Section) roundsLine() string {
	if s.Rounds > 1 {
		return fmt.Sprintf("Rounds: %d; each figure is the median round.", s.Rounds)
	}
	return "Rounds: 1; each figure is a single measurement (no min or max)."
}
