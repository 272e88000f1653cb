package bench

import (
	"fmt"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Bars saves a bar chart of values under the results dir and adds it to s.
func (r *Runner) Bars(s *Section, file, title, ylabel string, labels []string, values []float64) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	vs := make(plotter.Values, len(values))
	for i, v := range values {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			v = 0
		}
		vs[i] = v
	}
	bars, err := plotter.NewBarChart(vs, vg.Points(28))
	if err != nil {
		s.Note("plot %s: %v", file, err)
		return
	}
	bars.Color = plotutil.Color(0)
	p.Add(bars)
	p.NominalX(labels...)
	r.save(s, p, file, vg.Length(90+60*len(labels)))
}

// XY is one line of a line plot.
type XY struct {
	Name string
	X, Y []float64
}

// Lines saves a line plot.
func (r *Runner) Lines(s *Section, file, title, xlabel, ylabel string, logX bool, lines ...XY) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	if logX {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	p.Legend.Top = true
	p.Legend.Left = true
	for i, l := range lines {
		pts := make(plotter.XYs, 0, len(l.X))
		for j := range l.X {
			if logX && l.X[j] <= 0 {
				continue
			}
			pts = append(pts, plotter.XY{X: l.X[j], Y: l.Y[j]})
		}
		if len(pts) == 0 {
			continue
		}
		ln, err := plotter.NewLine(pts)
		if err != nil {
			s.Note("plot %s: %v", file, err)
			return
		}
		ln.Color = plotutil.Color(i)
		ln.Width = vg.Points(1.5)
		p.Add(ln)
		p.Legend.Add(l.Name, ln)
	}
	r.save(s, p, file, 6*vg.Inch)
}

// CDF saves latency CDFs (ms on a log axis).
func (r *Runner) CDF(s *Section, file, title string, series map[string][]float64) {
	var lines []XY
	for name, v := range series { // v sorted
		if len(v) == 0 {
			continue
		}
		step := max(1, len(v)/2000)
		var l XY
		l.Name = name
		for i := 0; i < len(v); i += step {
			l.X = append(l.X, v[i])
			l.Y = append(l.Y, float64(i+1)/float64(len(v)))
		}
		l.X = append(l.X, v[len(v)-1])
		l.Y = append(l.Y, 1)
		lines = append(lines, l)
	}
	r.Lines(s, file, title, "latency (ms, log)", "fraction ≤ x", true, lines...)
}

func (r *Runner) save(s *Section, p *plot.Plot, file string, width vg.Length) {
	if err := p.Save(width, 4*vg.Inch, filepath.Join(r.Out, file)); err != nil {
		s.Note("plot %s: %v", file, fmt.Errorf("save: %w", err))
		return
	}
	s.Figures = append(s.Figures, file)
}
