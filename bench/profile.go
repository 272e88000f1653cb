package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// profileMissed reruns m with a CPU profile of the server taken while the
// load runs, and adds the top of the profile to the section: where an aim is
// missed, the report names what the edge spent its CPU on.
func (r *Runner) profileMissed(ctx context.Context, sec *Section, name string, m mqttRun) {
	if r.Quick {
		sec.Note("Aim missed: the full run (make bench) profiles the edge under this load.")
		return
	}
	var wait func()
	m.onLoad = func(ctx context.Context, s *Server) {
		wait = r.profileDuring(ctx, sec, name, s, r.dur(time.Second, 2*time.Second))
	}
	if _, _, err := r.runMQTT(ctx, m); err != nil {
		sec.Note("profiling run failed: %v", err)
		return
	}
	if wait != nil {
		wait()
	}
}

// profileDuring starts a CPU profile of s after delay, for the profile
// duration; the returned func waits for it and adds its top to sec.
func (r *Runner) profileDuring(ctx context.Context, sec *Section, name string, s *Server, delay time.Duration) func() {
	d := r.dur(3*time.Second, 8*time.Second)
	type prof struct {
		path string
		err  error
	}
	ch := make(chan prof, 1)
	go func() {
		time.Sleep(delay)
		p, err := r.Profile(ctx, s, name, d)
		ch <- prof{p, err}
	}()
	return func() {
		p := <-ch
		if p.err != nil {
			sec.Note("profile failed: %v", p.err)
			return
		}
		top, err := pprofTop(p.path)
		if err != nil {
			sec.Note("pprof -top failed: %v", err)
			return
		}
		txt := filepath.Join(r.Out, "profile-"+name+".txt")
		_ = os.WriteFile(txt, []byte(top), 0o644)
		sec.Note("Aim missed: CPU profile of the edge under this load (%s, %s); top by cumulative time:\n\n```\n%s```", filepath.Base(p.path), filepath.Base(txt), top)
	}
}

// pprofTop runs go tool pprof -top on a profile and keeps the head.
func pprofTop(path string) (string, error) {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=25", path).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %v: %s", err, out)
	}
	lines := strings.Split(string(out), "\n")
	var keep []string
	for _, l := range lines {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Type:") || strings.HasPrefix(l, "Time:") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n"), nil
}
