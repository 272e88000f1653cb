package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a loopback TCP proxy that counts the bytes each way: what a
// sensor's radio would carry.
type Proxy struct {
	Addr     string
	l        net.Listener
	up, down atomic.Int64 // client→server, server→client
	wg       sync.WaitGroup
}

// NewProxy forwards a new loopback port to target.
func NewProxy(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p := &Proxy{Addr: l.Addr().String(), l: l}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.wg.Add(2)
			go func() { defer p.wg.Done(); p.up.Add(copyClose(s, c)) }()
			go func() { defer p.wg.Done(); p.down.Add(copyClose(c, s)) }()
		}
	}()
	return p, nil
}

func copyClose(dst, src net.Conn) int64 {
	n, _ := io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		dst.Close()
	}
	return n
}

// Reset zeroes the counters.
func (p *Proxy) Reset() { p.up.Store(0); p.down.Store(0) }

// Bytes is what went up and down so far.
func (p *Proxy) Bytes() (up, down int64) { return p.up.Load(), p.down.Load() }

// Close stops accepting.
func (p *Proxy) Close() { p.l.Close() }

// timed is what /usr/bin/time -f reported for one command.
type timed struct {
	Wall, User, Sys float64
	MaxRSSKiB       int64
	MinorFaults     int64
	Up, Down        int64 // bytes on the wire
}

const timeFormat = "%e real,%U user,%S sys,%P CPU,%Mk max mem,%R minor pagefaults"

// runTimed runs argv with stdin under /usr/bin/time.
func runTimed(ctx context.Context, dir string, stdin string, argv ...string) (timed, error) {
	out := filepath.Join(dir, fmt.Sprintf("time-%d.txt", time.Now().UnixNano()))
	cmd := exec.CommandContext(ctx, "/usr/bin/time", append([]string{"-f", timeFormat, "-o", out}, argv...)...)
	cmd.Stdin = strings.NewReader(stdin)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return timed{}, fmt.Errorf("%s: %v: %s", filepath.Base(argv[0]), err, tail(b))
	}
	tb, err := os.ReadFile(out)
	if err != nil {
		return timed{}, fmt.Errorf("time output: %w", err)
	}
	line := strings.TrimSpace(string(tb))
	if i := strings.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	var t timed
	for _, f := range strings.Split(line, ",") {
		fs := strings.Fields(f)
		if len(fs) < 2 {
			continue
		}
		v := strings.TrimSuffix(fs[0], "k")
		switch fs[1] {
		case "real":
			t.Wall, _ = strconv.ParseFloat(v, 64)
		case "user":
			t.User, _ = strconv.ParseFloat(v, 64)
		case "sys":
			t.Sys, _ = strconv.ParseFloat(v, 64)
		case "max":
			t.MaxRSSKiB, _ = strconv.ParseInt(v, 10, 64)
		case "minor":
			t.MinorFaults, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return t, nil
}

func tail(b []byte) string {
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return string(b)
}

// scenDevice is scenario 4.
func (r *Runner) scenDevice(ctx context.Context, sec *Section) error {
	if _, err := os.Stat(filepath.Join(r.Repo, "cmd", "iotkv-device")); err != nil {
		return fmt.Errorf("%w: cmd/iotkv-device is not in the tree yet", ErrSkip)
	}
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		return fmt.Errorf("%w: /usr/bin/time is not installed (apt-get install -y time)", ErrSkip)
	}
	bin := filepath.Join(r.Work, "iotkv-device")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/iotkv-device")
	build.Dir, build.Env = r.Repo, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build iotkv-device: %v: %s", err, out)
	}
	st, _ := os.Stat(bin)
	e, err := r.StartEdge(ctx, "", 0)
	if err != nil {
		return err
	}
	defer e.Stop()
	mp, err := NewProxy(e.MQTT)
	if err != nil {
		return err
	}
	defer mp.Close()
	hp, err := NewProxy(e.HTTPS)
	if err != nil {
		return err
	}
	defer hp.Close()
	dev := r.PKI.Devices[53]
	pwFile := filepath.Join(r.Work, "device.pw")
	if err := os.WriteFile(pwFile, []byte(Password(dev)+"\n"), 0o600); err != nil {
		return fmt.Errorf("password file: %w", err)
	}
	var writes, menu strings.Builder
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&writes, "w\nkey%d\nvalue%d\n", i, i)
	}
	menu.WriteString(writes.String())
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&menu, "r\nkey%d\n", i)
	}
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&menu, "d\nkey%d\n", i)
	}
	writes.WriteString("q\n")
	menu.WriteString("q\n")
	reps := r.rounds()
	sec.Rounds = reps
	walls := map[string][]float64{} // every run's wall time, per workload
	var firstWall []float64         // the first run of each workload: the edge's credential cache is cold
	run := func(name, input string) (timed, error) {
		var ts []timed
		for i := 0; i < reps; i++ {
			mp.Reset()
			hp.Reset()
			q, _ := os.MkdirTemp(r.Work, "queue-")
			t, err := runTimed(ctx, r.Work, input, bin, "shell", "--name", dev, "--password-file", pwFile, "--certs", r.PKI.Certs,
				"--edge", mp.Addr, "--rest", "https://"+hp.Addr, "--queue", q)
			if err != nil {
				return t, err
			}
			time.Sleep(100 * time.Millisecond) // the proxy sees the close
			mu, md := mp.Bytes()
			hu, hd := hp.Bytes()
			t.Up, t.Down = mu+hu, md+hd
			if i == 0 {
				firstWall = append(firstWall, t.Wall)
			}
			ts = append(ts, t)
		}
		med, ws := medianRound(ts, func(t timed) float64 { return t.Wall })
		walls[name] = ws
		return med, nil
	}
	w, err := run("iotkv-device shell, 100 writes", writes.String())
	if err != nil {
		return err
	}
	m, err := run("iotkv-device shell, menu workload", menu.String())
	if err != nil {
		return err
	}
	// mosquitto_pub: the same 100 values, QoS 1, through the same proxy to
	// the same edge.
	var mq timed
	mqOK := false
	if _, err := exec.LookPath("mosquitto_pub"); err == nil {
		var lines strings.Builder
		for i := 1; i <= 100; i++ {
			fmt.Fprintf(&lines, "\"value%d\"\n", i)
		}
		p := r.PKI.Paths(dev)
		host, port, _ := net.SplitHostPort(mp.Addr)
		var ts []timed
		for i := 0; i < reps; i++ {
			mp.Reset()
			t, err := runTimed(ctx, r.Work, lines.String(), "mosquitto_pub", "-h", host, "-p", port, "--cafile", p.CA, "--cert", p.Cert, "--key", p.Key,
				"-u", dev, "-P", Password(dev), "-q", "1", "-i", fmt.Sprintf("%s-pub-%d", dev, i), "-t", "iotkv/v1/devices/"+dev+"/kv/key", "-l")
			if err != nil {
				sec.Note("mosquitto_pub failed: %v", err)
				break
			}
			time.Sleep(100 * time.Millisecond)
			t.Up, t.Down = mp.Bytes()
			ts = append(ts, t)
		}
		if len(ts) == reps {
			mq, walls["mosquitto_pub -l, 100 values"] = medianRound(ts, func(t timed) float64 { return t.Wall })
			mqOK = true
		}
	} else {
		sec.Note("mosquitto_pub is not installed (apt-get install -y mosquitto-clients): its row is missing")
	}
	sec.Row("client, workload", "wall", "user + sys CPU", "max RSS", "bytes on the wire (up + down)", "bytes per op", "wall ÷ replaced C++ (30 s, measured separately, not in this run)", "RSS ÷ C++ (9.3 MB, measured separately, not in this run)")
	row := func(name string, t timed, ops int) {
		sec.Row(name, fmt.Sprintf("%.2f s", t.Wall), fmt.Sprintf("%.2f s", t.User+t.Sys), fmt.Sprintf("%.1f MB", float64(t.MaxRSSKiB)/1000),
			fmt.Sprintf("%d + %d", t.Up, t.Down), fmt.Sprintf("%.0f", float64(t.Up+t.Down)/float64(ops)),
			fmt.Sprintf("%.3f×", t.Wall/30), fmt.Sprintf("%.2f×", float64(t.MaxRSSKiB)/1000/9.3))
	}
	row("iotkv-device shell: 100 writes (menu form)", w, 100)
	row("iotkv-device shell: 100 writes, 100 reads, 100 deletes", m, 300)
	if mqOK {
		row("mosquitto_pub -l -q 1: the same 100 values", mq, 100)
	}
	sec.Row("replaced C++ client, 100 writes (a fixed figure measured separately, not in this run; its paper: 32 s, 7.9 MB)", "≈ 30 s", "–", "9.3 MB", "–", "–", "1×", "1×")
	sec.Note("Measured with `/usr/bin/time -f '%s'`, median of %d run(s), against one edge on loopback through a byte-counting TCP proxy (MQTT and HTTPS both counted, TLS handshakes included). iotkv-device is the release build (CGO_ENABLED=0, -trimpath, -s -w): %.1f MB. Each run starts with a fresh queue dir, so it also learns its seq from the retained status/ack.",
		timeFormat, reps, float64(st.Size())/1e6)
	for _, name := range []string{"iotkv-device shell, 100 writes", "iotkv-device shell, menu workload", "mosquitto_pub -l, 100 values"} {
		if ws, ok := walls[name]; ok {
			sec.Note("%s", roundsNote(name, "wall", ws, seconds))
		}
	}
	sec.Raw["rounds_wall_s"] = walls
	sec.SetSpread("100 writes", walls["iotkv-device shell, 100 writes"], seconds)
	if len(firstWall) == 2 {
		sec.Note("First run of each workload, the edge's credential cache still cold (one bcrypt cost-10 check at login): %.2f s (100 writes), %.2f s (menu workload).", firstWall[0], firstWall[1])
	}
	sec.Check("100 writes through iotkv-device shell < 0.3 s wall", w.Wall, w.Wall < 0.3, "%.2f s (%.0f× faster than the C++ client's 30 s, measured separately, not in this run)", w.Wall, 30/max(w.Wall, 0.001))
	sec.Check("full menu workload < 0.3 s wall", m.Wall, m.Wall < 0.3, "%.2f s", m.Wall)
	rss := float64(max(w.MaxRSSKiB, m.MaxRSSKiB)) / 1000
	sec.Check("max RSS ≤ 8 MB", rss, rss <= 8, "%.1f MB (C++ 9.3 MB, measured separately, not in this run)", rss)
	if mqOK {
		bw, bm := float64(w.Up+w.Down)/100, float64(mq.Up+mq.Down)/100
		sec.Check("fewer bytes per write than mosquitto_pub", bw/bm, bw < bm, "%.0f vs %.0f bytes per write (%.2f×)", bw, bm, bw/bm)
		sec.Note("mosquitto_pub: %.2f s wall, %.1f MB max RSS for the same 100 messages; iotkv-device wall ÷ mosquitto_pub = %.2f×, RSS ÷ = %.2f×.", mq.Wall, float64(mq.MaxRSSKiB)/1000, w.Wall/max(mq.Wall, 0.001), float64(w.MaxRSSKiB)/float64(max(mq.MaxRSSKiB, 1)))
	}
	sec.Raw["writes"], sec.Raw["menu"], sec.Raw["mosquitto_pub"], sec.Raw["binary_bytes"] = w, m, mq, st.Size()
	return nil
}
