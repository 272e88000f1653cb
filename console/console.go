// Package console is iotkv's web console: a small framework-free app in
// plain JavaScript, CSS and SVG, embedded in the binary and served under
// /ui/ by the edge and the master with strict security headers.
//
// The console is static: it holds no data and needs no login to load. It
// asks for a username and password, keeps them in the tab's
// sessionStorage only (never a cookie, a URL or localStorage), and sends
// them as Basic auth on every API call it makes with fetch(), exactly as a
// program would. The live key browser reads the Server-Sent Events of
// /v1/watch through fetch() streaming rather than EventSource, because
// EventSource cannot send an Authorization header. Nothing is ambient, so
// there is nothing for another site to forge (no CSRF surface), and a
// disabled or deleted account is refused on its next request.
package console

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed assets
var assets embed.FS

// App is which console a server shows.
type App string

// The two consoles.
const (
	Edge   App = "edge"
	Master App = "master"
)

// CSP is the Content-Security-Policy of every /ui/ answer: scripts, styles
// and images from the server itself only (no inline script or style, no
// eval), API calls to the same origin, no frames, no plugins, no forms
// posted anywhere (the login form is handled by script).
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves app's console; mount it at /ui/ (it strips that prefix
// itself). GET and HEAD only.
func Handler(app App) http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	index := string(app) + ".html"
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		SecurityHeaders(w.Header())
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(path.Clean("/"+strings.TrimPrefix(r.URL.Path, "/ui")), "/")
		switch {
		case name == "" || name == ".":
			name = index
		case strings.HasSuffix(name, ".html"):
			// Each server shows its own page only, at /ui/.
			http.NotFound(w, r)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + name
		files.ServeHTTP(w, r2)
	})
}

// SecurityHeaders sets the console's security headers on h.
func SecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	h.Set("Cache-Control", "no-cache")
}
