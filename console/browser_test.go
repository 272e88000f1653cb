package console_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	paho "github.com/eclipse/paho.mqtt.golang"

	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/console"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
	"github.com/iotkv/iotkv/master"
)

// shotsEnv names a directory to write a screenshot of each page to (make
// bench sets it); unset, the test takes none.
const shotsEnv = "IOTKV_CONSOLE_SHOTS"

// A person logs into the edge's console in a real browser, sees a device
// appear, opens its keys, sees a value change live after an MQTT publish,
// opens the key's history chart and the health page; then logs into the
// master's console and sees the edge with its lag. The browser logs no
// error (a CSP violation would be one) and every page carries the
// security headers.
func TestConsoleInABrowser(t *testing.T) {
	chromium := findChromium(t)
	pki, e, m := startServers(t)
	edgeURL, masterURL := "https://"+e.HTTPAddr(), "https://"+m.HTTPAddr()

	b := newBrowser(t, chromium, pki.Paths("e1").Cert, pki.Paths("master").Cert)
	shots := os.Getenv(shotsEnv)

	// Log in to the edge; no device has written yet.
	b.run("open the edge console and log in", chromedp.Navigate(edgeURL+"/ui/"))
	b.login("admin")
	b.run("see the devices page", chromedp.WaitVisible(chromedp.CSS(`#devices-body`)))

	// A device connects and writes: it appears in the list.
	dev := pki.Connect(t, e.MQTTAddr(), "d1")
	t.Cleanup(func() { dev.Disconnect(50) })
	publish(t, dev, 1, "temp", 20)
	publish(t, dev, 2, "room/name", "lab")
	b.run("see d1 appear in the device list", chromedp.WaitVisible(chromedp.CSS(`#devices tr[data-device="d1"]`)))
	b.shot(shots, "edge-devices")

	// Its keys, live.
	b.run("open d1's keys", chromedp.Click(chromedp.CSS(`#devices tr[data-device="d1"] a.device-link`)),
		chromedp.WaitVisible(chromedp.CSS(`#keys tr[data-key="temp"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#keys tr[data-key="room/name"]`)),
		waitText(`#live-state`, "live"))
	before := get(b, "note the page load", chromedp.Evaluate[float64](`performance.timeOrigin`))
	start := time.Now()
	publish(t, dev, 3, "temp", 21.5)
	b.run("see temp change to 21.5 without a reload", waitText(`#keys tr[data-key="temp"] code.value`, "21.5"))
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the new value showed %v after the publish; want within 2 s", d)
	} else {
		t.Logf("the new value showed %v after the publish began", d)
	}
	publish(t, dev, 4, "new/key", true)
	b.run("see a new key appear live", chromedp.WaitVisible(chromedp.CSS(`#keys tr[data-key="new/key"]`)))
	after := get(b, "check the page was not reloaded", chromedp.Evaluate[float64](`performance.timeOrigin`))
	if before != after {
		t.Errorf("the page was reloaded (time origin %v → %v)", before, after)
	}
	b.shot(shots, "edge-keys")

	// The key's history as a chart: three numeric points.
	publish(t, dev, 5, "temp", 19.25)
	b.run("open temp's history", chromedp.Click(chromedp.CSS(`#keys tr[data-key="temp"] a.key-link`)),
		chromedp.WaitVisible(chromedp.CSS(`#history-chart svg.chart polyline`)),
		waitText(`#current-value`, "19.25"))
	points := get(b, "count the chart's points", chromedp.Evaluate[int](`document.querySelectorAll("#history-chart circle").length`))
	if points != 3 {
		t.Errorf("history chart has %d points; want 3 (20, 21.5, 19.25)", points)
	}
	b.shot(shots, "edge-history")

	// Health, while the device writes: rates need two polls.
	stop := make(chan struct{})
	writing := make(chan error, 1)
	go func() { writing <- keepWriting(dev, 100, stop) }()
	b.run("open the health page", chromedp.Click(chromedp.CSS(`#nav a[data-page="health"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#h-disk`)), waitSuffix(`#h-p99`, " ms"), waitNotText(`#h-ops`, "0"), waitNotText(`#h-disk`, "—"))
	close(stop)
	if err := <-writing; err != nil {
		t.Fatal(err)
	}
	conn := get(b, "read connected devices", chromedp.Text(chromedp.CSS(`#h-conn`)))
	if !strings.HasPrefix(conn, "1 of") {
		t.Errorf("health shows %q connected devices; want 1 of ...", conn)
	}
	b.shot(shots, "edge-health")

	// The same page on a phone: no sideways scrolling.
	b.run("devices on a phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Click(chromedp.CSS(`#nav a[data-page="devices"]`)), chromedp.WaitVisible(chromedp.CSS(`#devices tr[data-device="d1"]`)))
	overflow := get(b, "check the width", chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
	if overflow {
		t.Error("the devices page scrolls sideways on a 390 px wide phone")
	}
	b.shot(shots, "edge-devices-phone")
	b.run("back to a desktop", chromedp.EmulateViewport(1280, 800))

	// The master's console: the edge with its lag.
	b.run("open the master console", chromedp.Navigate(masterURL+"/ui/"))
	b.login("admin")
	b.run("see e1 caught up", chromedp.WaitVisible(chromedp.CSS(`#edges tr[data-edge="e1"]`)),
		waitText(`#edges tr[data-edge="e1"] .lag`, "0"), waitText(`#edges tr[data-edge="e1"] .dot`, "connected"))
	b.shot(shots, "master-edges")
	b.run("open the finder", chromedp.Click(chromedp.CSS(`#nav a[data-page="find"]`)), chromedp.WaitVisible(chromedp.CSS(`#find-prefix`)))
	// The master's own device directory answers: d1 is on e1.
	b.run("find d1", chromedp.SendKeys(`#find-prefix`, "d"), chromedp.Click(`#find-prefix + button`),
		waitText(`#found tr[data-device="d1"] td.edge`, "e1"))
	b.run("a prefix nobody has", chromedp.SetValue(`#find-prefix`, "zz"), chromedp.Click(`#find-prefix + button`),
		waitText(`#find-body p.muted`, "No device starting with zz."))
	b.run("back to d", chromedp.SetValue(`#find-prefix`, "d"), chromedp.Click(`#find-prefix + button`),
		chromedp.WaitVisible(chromedp.CSS(`#found tr[data-device="d1"]`)))
	b.shot(shots, "master-find")

	// Log out: the credentials leave the tab.
	b.run("log out", chromedp.Click(chromedp.CSS(`#logout`)), chromedp.WaitVisible(chromedp.CSS(`#login`)))
	stored := get(b, "read the browser's storage", chromedp.Evaluate[string](`JSON.stringify(sessionStorage) + JSON.stringify(localStorage) + document.cookie`))
	if stored != "{}{}" {
		t.Errorf("after logout the browser still holds %s", stored)
	}

	b.checkHeaders(edgeURL+"/ui/", masterURL+"/ui/")
	b.checkNoErrors()
}

// startServers starts an edge e1 and a master following it, with accounts
// admin (role admin), rd (reader) and d1 (device).
func startServers(t *testing.T) (*testenv.PKI, *edge.Edge, *master.Master) {
	t.Helper()
	pki := testenv.NewPKI(t)
	identity(t, pki, "admin", iotkv.RoleAdmin, certs.RoleClient)
	identity(t, pki, "rd", iotkv.RoleReader, certs.RoleClient)
	identity(t, pki, "d1", iotkv.RoleDevice, certs.RoleDevice)
	identity(t, pki, "master", iotkv.RoleMaster, certs.RoleMaster)
	identity(t, pki, "e1", iotkv.RoleEdge, certs.RoleEdge)
	e := testenv.StartEdge(t, pki, "e1", nil)
	m, err := master.Open(master.Options{
		DataDir: t.TempDir(), Password: testenv.Password("master"), TLSFiles: pki.Paths("master"),
		Accounts: pki.Accounts, Edges: []master.Edge{{ID: "e1", Addr: e.MQTTAddr()}}, HTTPAddr: "127.0.0.1:0",
		SnapshotInterval: 200 * time.Millisecond, AccountsPoll: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return pki, e, m
}

// identity is testenv's Identity with a bcrypt cost of 4: the accounts
// code refuses to make such hashes but accepts them, and under -race a
// cost-10 check takes seconds on a busy machine.
func identity(t *testing.T, pki *testenv.PKI, name string, role iotkv.Role, certRole string) {
	t.Helper()
	if err := certs.Issue(pki.Dir, certs.Request{Name: name, Role: certRole}); err != nil {
		t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(testenv.Password(name)), 4)
	if err != nil {
		t.Fatal(err)
	}
	f, err := accounts.Load(pki.Accounts)
	if err != nil {
		t.Fatal(err)
	}
	f.Accounts = append(f.Accounts, accounts.Account{Name: name, Role: role, Hash: string(hash)})
	if err := f.Save(pki.Accounts); err != nil {
		t.Fatal(err)
	}
}

func findChromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return testenv.RequireTool(t, "chromium")
}

// browser is a headless chromium driven over CDP, recording what the
// pages log and the response headers of every document.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu      sync.Mutex
	errors  []string
	headers map[string]network.Headers // by document URL
}

func newBrowser(t *testing.T, chromium string, serverCerts ...string) *browser {
	t.Helper()
	// Trust exactly the servers' keys: chromium takes a list of SPKI hashes
	// whose certificate errors it ignores (a fresh profile has no CA store
	// to add the test CA to).
	var pins []string
	for _, f := range serverCerts {
		pins = append(pins, spkiHash(t, f))
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("disable-extensions", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(pins, ",")),
		chromedp.WindowSize(1280, 800),
	}
	b := &browser{t: t, headers: map[string]network.Headers{}}
	// listen runs in the tab's event loop: it only records.
	listen := func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				b.errors = append(b.errors, "console."+string(ev.Type)+": "+strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			b.errors = append(b.errors, fmt.Sprintf("exception: %s at %s:%d", msg, d.URL, d.LineNumber+1))
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError {
				b.errors = append(b.errors, "log "+string(ev.Entry.Source)+": "+ev.Entry.Text+" "+ev.Entry.URL)
			}
		case *network.EventResponseReceived:
			if ev.Type == network.ResourceTypeDocument {
				b.headers[ev.Response.URL] = ev.Response.Headers
			}
		}
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf), chromedp.WithListener(listen))
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	b.ctx = ctx
	// The first action starts the browser, under the context that keeps it
	// alive (a timeout here would end the browser with it).
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

// run runs actions as one step of the story, failing the test with the
// step's name.
func (b *browser) run(step string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	get(b, step, chromedp.Steps(actions...))
}

// get runs one action that returns a value.
func get[T any](b *browser, step string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		var html string
		hctx, hcancel := context.WithTimeout(b.ctx, 2*time.Second)
		html, _ = chromedp.Run(hctx, chromedp.OuterHTML(chromedp.CSS("main")))
		hcancel()
		b.t.Fatalf("%s: %v\nthe page's main: %s\nbrowser errors: %v", step, err, html, b.errs())
	}
	return v
}

func (b *browser) login(user string) {
	b.t.Helper()
	b.run("log in as "+user, chromedp.WaitVisible(chromedp.CSS(`#login`)),
		chromedp.SendKeys(chromedp.CSS(`#user`), user),
		chromedp.SendKeys(chromedp.CSS(`#password`), testenv.Password(user)),
		chromedp.Click(chromedp.CSS(`#login button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#logout`)))
	url := get(b, "read the URL", chromedp.Location())
	if strings.Contains(url, testenv.Password(user)) || strings.Contains(url, "password") {
		b.t.Errorf("the password is in the URL: %s", url)
	}
}

// shot writes a PNG of the viewport to dir/name.png when dir is set.
func (b *browser) shot(dir, name string) {
	b.t.Helper()
	if dir == "" {
		return
	}
	b.run("let the layout settle", chromedp.Sleep(300*time.Millisecond)) // screenshots only
	png := get(b, "screenshot "+name, chromedp.CaptureScreenshot())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) errs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

func (b *browser) checkNoErrors() {
	b.t.Helper()
	for _, e := range b.errs() {
		b.t.Errorf("the browser logged an error: %s", e)
	}
}

// checkHeaders checks the security headers the browser received with
// each console page.
func (b *browser) checkHeaders(urls ...string) {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	want := map[string]string{
		"content-security-policy": console.CSP,
		"x-frame-options":         "DENY",
		"x-content-type-options":  "nosniff",
		"referrer-policy":         "no-referrer",
	}
	for _, u := range urls {
		h, ok := b.headers[u]
		if !ok {
			b.t.Errorf("no document response recorded for %s (have %v)", u, keys(b.headers))
			continue
		}
		got := map[string]string{}
		for k, v := range h {
			got[strings.ToLower(k)] = fmt.Sprint(v)
		}
		for k, v := range want {
			if got[k] != v {
				b.t.Errorf("%s: header %s = %q; want %q", u, k, got[k], v)
			}
		}
		for _, bad := range []string{"'unsafe-inline'", "'unsafe-eval'", "*"} {
			if strings.Contains(got["content-security-policy"], bad) {
				b.t.Errorf("%s: CSP allows %s", u, bad)
			}
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// waitText waits until sel's text is want.
func waitText(sel, want string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](fmt.Sprintf(`(() => { const n = document.querySelector(%q); return !!n && n.textContent.trim() === %q; })()`, sel, want),
		chromedp.WithPollingInterval(25*time.Millisecond))
}

// waitSuffix waits until sel's text ends with suffix.
func waitSuffix(sel, suffix string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](fmt.Sprintf(`(() => { const n = document.querySelector(%q); return !!n && n.textContent.trim().endsWith(%q); })()`, sel, suffix),
		chromedp.WithPollingInterval(50*time.Millisecond))
}

// waitNotText waits until sel exists and its text is not text.
func waitNotText(sel, text string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](fmt.Sprintf(`(() => { const n = document.querySelector(%q); return !!n && n.textContent.trim() !== %q; })()`, sel, text),
		chromedp.WithPollingInterval(50*time.Millisecond))
}

// keepWriting publishes a batch of 10 puts every 20 ms from seq on, until
// stop closes.
func keepWriting(c paho.Client, seq uint64, stop <-chan struct{}) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for ; ; seq++ {
		b := iotkv.Batch{Seq: seq}
		for i := range 10 {
			b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("load/%d", i), Value: json.RawMessage(strconv.FormatUint(seq, 10))})
		}
		payload, _ := json.Marshal(b)
		tok := c.Publish(iotkv.BatchTopic("d1"), 1, false, payload)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return fmt.Errorf("publish batch %d: %v", seq, tok.Error())
		}
		select {
		case <-stop:
			return nil
		case <-tick.C:
		}
	}
}

func publish(t *testing.T, c paho.Client, seq uint64, key string, value any) {
	t.Helper()
	v, _ := json.Marshal(value)
	payload, _ := json.Marshal(iotkv.Batch{Seq: seq, Ops: []iotkv.Op{{Op: iotkv.OpPut, Key: key, Value: v}}})
	tok := c.Publish(iotkv.BatchTopic("d1"), 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s=%s: %v", key, v, tok.Error())
	}
}

func spkiHash(t *testing.T, certFile string) string {
	t.Helper()
	data, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil {
		t.Fatalf("%s: no PEM block", certFile)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}
