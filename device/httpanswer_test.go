package device

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadHTTPAnswer(t *testing.T) {
	long := strings.Repeat("x", 10<<10) // longer than bufio's 4 KiB buffer
	for _, tc := range []struct {
		name, in string
		code     int
		status   string
		body     string
		keep     bool
	}{
		{"sized", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}", 200, "200 OK", `{"a":1}`, true},
		{"chunked", "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n3;ext=1\r\nabc\r\n0A\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n", 200, "200 OK", "abc0123456789", true},
		{"chunked wins", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 200, "200 OK", "a", true},
		{"close", "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno", 404, "404 Not Found", "no", false},
		{"1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na", 200, "200 OK", "a", false},
		{"1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\na", 200, "200 OK", "a", true},
		{"until close", "HTTP/1.1 500 Internal Server Error\r\n\r\nboom", 500, "500 Internal Server Error", "boom", false},
		{"continue", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "200 OK", "", true},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", 204, "204 No Content", "", true},
		{"LF only", "HTTP/1.1 200 OK\nContent-Length: 1\n\na", 200, "200 OK", "a", true},
		{"no reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 200, "200", "", true},
		{"long header", "HTTP/1.1 200 OK\r\nX-Long: " + long + "\r\nContent-Length: 1\r\n\r\na", 200, "200 OK", "a", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := readHTTPAnswer(bufio.NewReader(strings.NewReader(tc.in)), 1<<10)
			if err != nil {
				t.Fatal(err)
			}
			if a.code != tc.code || a.status != tc.status || string(a.body) != tc.body || a.keep != tc.keep {
				t.Fatalf("got %d %q %q keep=%v, want %d %q %q keep=%v", a.code, a.status, a.body, a.keep, tc.code, tc.status, tc.body, tc.keep)
			}
		})
	}
}

func TestReadHTTPAnswerConsumesExactlyOneAnswer(t *testing.T) {
	r := bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na" +
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n" +
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc"))
	for _, want := range []string{"a", "b", "c"} {
		a, err := readHTTPAnswer(r, 100)
		if err != nil || string(a.body) != want {
			t.Fatalf("got %q, %v; want %q", a.body, err, want)
		}
	}
	if _, err := readHTTPAnswer(r, 100); err != io.EOF {
		t.Fatalf("after the last answer: %v, want io.EOF", err)
	}
}

func TestReadHTTPAnswerRefusesBadAnswers(t *testing.T) {
	for name, in := range map[string]string{
		"garbage":          "SSH-2.0-OpenSSH\r\n\r\n",
		"HTTP/2":           "HTTP/2 200 OK\r\n\r\n",
		"no code":          "HTTP/1.1\r\n\r\n",
		"bad code":         "HTTP/1.1 2x0 OK\r\n\r\n",
		"bad length":       "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"two lengths":      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
		"gzip":             "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"folded header":    "HTTP/1.1 200 OK\r\n folded\r\n\r\n",
		"too big":          "HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",
		"too big chunked":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + strings.Repeat("a", 64) + "\r\n40\r\n",
		"too big unsized":  "HTTP/1.1 200 OK\r\n\r\n" + strings.Repeat("a", 101),
		"bad chunk size":   "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"no chunk CRLF":    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n",
		"cut body":         "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
		"cut headers":      "HTTP/1.1 200 OK\r\nContent-Len",
		"header too long":  "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", httpMaxLine) + "\r\n\r\n",
		"cut chunked body": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
	} {
		t.Run(name, func(t *testing.T) {
			a, err := readHTTPAnswer(bufio.NewReader(strings.NewReader(in)), 100)
			if err == nil {
				t.Fatalf("accepted: %+v", a)
			}
			if strings.HasPrefix(name, "cut") && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%v, want io.ErrUnexpectedEOF", err)
			}
		})
	}
}
