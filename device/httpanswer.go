package device

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// httpAnswer is an HTTP/1.x answer to a GET.
type httpAnswer struct {
	code   int
	status string // "404 Not Found"
	body   []byte
	keep   bool // the connection can carry another request
}

const (
	httpMaxLine   = 16 << 10 // bytes of the status line, a header or a chunk size line
	httpMaxHeader = 1 << 20  // bytes of all the header lines
)

var errHTTPMalformed = errors.New("malformed HTTP answer")

// readHTTPAnswer reads one answer to a GET from r: the status line, the
// headers (only Content-Length, Transfer-Encoding and Connection matter),
// and a body that is sized, chunked, or ends with the connection. 1xx
// answers are skipped. A body longer than maxBody is an error.
func readHTTPAnswer(r *bufio.Reader, maxBody int) (httpAnswer, error) {
	for {
		a, err := readHTTPAnswerOnce(r, maxBody)
		if err != nil || a.code >= 200 || a.code == 101 {
			return a, err
		}
	}
}

func readHTTPAnswerOnce(r *bufio.Reader, maxBody int) (httpAnswer, error) {
	var a httpAnswer
	line, err := readHTTPLine(r)
	if err != nil {
		return a, err
	}
	// HTTP/1.1 200 OK
	proto, rest, ok := bytes.Cut(line, []byte(" "))
	var minor byte
	switch string(proto) {
	case "HTTP/1.1":
		minor = 1
	case "HTTP/1.0":
		minor = 0
	default:
		ok = false
	}
	if !ok {
		return a, fmt.Errorf("%w: status line %q", errHTTPMalformed, line)
	}
	code, _, _ := bytes.Cut(rest, []byte(" "))
	if len(code) != 3 {
		return a, fmt.Errorf("%w: status line %q", errHTTPMalformed, line)
	}
	if a.code, err = strconv.Atoi(string(code)); err != nil || a.code < 100 {
		return a, fmt.Errorf("%w: status line %q", errHTTPMalformed, line)
	}
	a.status = string(bytes.TrimSpace(rest))
	length, chunked, closeConn, keepAlive := int64(-1), false, false, false
	for total := 0; ; {
		line, err := readHTTPLine(r)
		if err != nil {
			return a, noEOF(err)
		}
		if len(line) == 0 {
			break
		}
		if total += len(line); total > httpMaxHeader {
			return a, fmt.Errorf("%w: headers larger than %d bytes", errHTTPMalformed, httpMaxHeader)
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || name[0] == ' ' || name[0] == '\t' {
			return a, fmt.Errorf("%w: header line %q", errHTTPMalformed, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case asciiEqualFold(name, "Content-Length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (length >= 0 && n != length) {
				return a, fmt.Errorf("%w: Content-Length %q", errHTTPMalformed, value)
			}
			length = n
		case asciiEqualFold(name, "Transfer-Encoding"):
			if !asciiEqualFold(value, "chunked") {
				return a, fmt.Errorf("%w: Transfer-Encoding %q", errHTTPMalformed, value)
			}
			chunked = true
		case asciiEqualFold(name, "Connection"):
			for _, t := range bytes.Split(value, []byte(",")) {
				t = bytes.TrimSpace(t)
				closeConn = closeConn || asciiEqualFold(t, "close")
				keepAlive = keepAlive || asciiEqualFold(t, "keep-alive")
			}
		}
	}
	a.keep = !closeConn && (minor == 1 || keepAlive)
	switch {
	case a.code < 200 || a.code == 204 || a.code == 304:
		// no body
	case chunked:
		// Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
		a.body, err = readChunked(r, maxBody)
	case length > int64(maxBody):
		return a, fmt.Errorf("answer of %d bytes is larger than %d", length, maxBody)
	case length >= 0:
		a.body = make([]byte, length)
		_, err = io.ReadFull(r, a.body)
		err = noEOF(err)
	default:
		// The body ends with the connection.
		a.keep = false
		a.body, err = io.ReadAll(io.LimitReader(r, int64(maxBody)+1))
		if err == nil && len(a.body) > maxBody {
			err = fmt.Errorf("answer larger than %d bytes", maxBody)
		}
	}
	return a, err
}

// readChunked reads a chunked body and its trailer.
func readChunked(r *bufio.Reader, maxBody int) ([]byte, error) {
	var body []byte
	for {
		line, err := readHTTPLine(r)
		if err != nil {
			return nil, noEOF(err)
		}
		size, _, _ := bytes.Cut(line, []byte(";")) // chunk extensions are ignored
		n, err := strconv.ParseUint(string(bytes.TrimSpace(size)), 16, 63)
		if err != nil {
			return nil, fmt.Errorf("%w: chunk size %q", errHTTPMalformed, line)
		}
		if n == 0 {
			break
		}
		if n > uint64(maxBody-len(body)) {
			return nil, fmt.Errorf("answer larger than %d bytes", maxBody)
		}
		body = append(body, make([]byte, n)...)
		if _, err := io.ReadFull(r, body[len(body)-int(n):]); err != nil {
			return nil, noEOF(err)
		}
		if line, err := readHTTPLine(r); err != nil || len(line) != 0 {
			return nil, fmt.Errorf("%w: no CRLF after a chunk", errHTTPMalformed)
		}
	}
	for { // the trailer
		line, err := readHTTPLine(r)
		if err != nil {
			return nil, noEOF(err)
		}
		if len(line) == 0 {
			return body, nil
		}
	}
}

// readHTTPLine reads a line without its CRLF (or LF). The slice is valid
// until the next read.
func readHTTPLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		long := append([]byte(nil), line...)
		for errors.Is(err, bufio.ErrBufferFull) && len(long) <= httpMaxLine {
			line, err = r.ReadSlice('\n')
			long = append(long, line...)
		}
		line = long
	}
	if len(line) > httpMaxLine {
		return nil, fmt.Errorf("%w: line longer than %d bytes", errHTTPMalformed, httpMaxLine)
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// asciiEqualFold reports whether b is s, ASCII case-insensitively.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}
