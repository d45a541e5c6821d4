package localapi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// The HTTP/1.1 that [Serve] reads: a request line, header lines, and a body
// of Content-Length bytes or in chunks, all through one buffer per
// connection that the server owns and zeroes, so that a secret in a body
// stays in no buffer of a library.

// connReader reads a connection through buf. The bytes read and not yet
// consumed are buf[r:w]; buf[w:] is always zero, and consumed bytes are
// zeroed as soon as the buffer is compacted.
type connReader struct {
	c    net.Conn
	buf  []byte
	r, w int
}

var errFull = errors.New("the buffer is full")

// buffered is how many bytes are read and not consumed.
func (cr *connReader) buffered() int { return cr.w - cr.r }

// compact moves the unconsumed bytes to the front and zeroes the rest.
func (cr *connReader) compact() {
	n := copy(cr.buf, cr.buf[cr.r:cr.w])
	clear(cr.buf[n:cr.w])
	cr.r, cr.w = 0, n
}

// wipe zeroes the whole buffer.
func (cr *connReader) wipe() {
	clear(cr.buf)
	cr.r, cr.w = 0, 0
}

// fill reads at least one more byte, or fails: errFull when the buffer
// holds nothing consumed and has no room left.
func (cr *connReader) fill() error {
	if cr.r > 0 {
		cr.compact()
	}
	if cr.w == len(cr.buf) {
		return errFull
	}
	for {
		n, err := cr.c.Read(cr.buf[cr.w:])
		cr.w += n
		switch {
		case n > 0:
			return nil
		case err != nil:
			return err
		}
	}
}

// readLine returns the next line without its CRLF (or LF). It is valid
// until the next read.
func (cr *connReader) readLine() ([]byte, error) {
	for {
		if i := bytes.IndexByte(cr.buf[cr.r:cr.w], '\n'); i >= 0 {
			line := cr.buf[cr.r : cr.r+i]
			cr.r += i + 1
			return bytes.TrimSuffix(line, []byte("\r")), nil
		}
		if err := cr.fill(); err != nil {
			return nil, err
		}
	}
}

// readFull fills p with what is buffered, then straight from the
// connection.
func (cr *connReader) readFull(p []byte) error {
	n := copy(p, cr.buf[cr.r:cr.w])
	cr.r += n
	_, err := io.ReadFull(cr.c, p[n:])
	return err
}

// request is a request's head, as read.
type request struct {
	method, target string
	url            *url.URL
	minor          int // HTTP/1.minor
	header         http.Header
	length         int64 // Content-Length; -1 when none
	chunked        bool
	keepAlive      bool
	expectContinue bool
}

// badRequest is a 400 [CodeBadRequest] saying what is wrong.
func badRequest(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

// readHead reads a request line and its header lines. An error that is an
// *Error is to be answered; any other means the connection is to be
// closed without an answer (it timed out or went away).
func (cr *connReader) readHead() (*request, error) {
	for {
		// Blank lines before a request are allowed (RFC 9112, 2.2).
		for cr.r < cr.w && (cr.buf[cr.r] == '\r' || cr.buf[cr.r] == '\n') {
			cr.r++
		}
		if end := headEnd(cr.buf[cr.r:cr.w]); end >= 0 {
			head := cr.buf[cr.r : cr.r+end]
			cr.r += end
			return parseHead(head)
		}
		if err := cr.fill(); err != nil {
			if err == errFull {
				return nil, &Error{Status: http.StatusRequestHeaderFieldsTooLarge, Code: CodeTooLarge,
					Message: fmt.Sprintf("request header is larger than %d bytes", len(cr.buf))}
			}
			return nil, err
		}
	}
}

// headEnd returns the length of the head in b, up to and including the
// empty line that ends it, or -1 when b does not hold all of it yet.
func headEnd(b []byte) int {
	end := -1
	if i := bytes.Index(b, []byte("\n\r\n")); i >= 0 {
		end = i + 3
	}
	if i := bytes.Index(b, []byte("\n\n")); i >= 0 && (end < 0 || i+2 < end) {
		end = i + 2
	}
	return end
}

func parseHead(head []byte) (*request, error) {
	lines := strings.Split(strings.TrimRight(string(head), "\r\n"), "\n")
	for i := range lines {
		lines[i] = strings.TrimSuffix(lines[i], "\r")
	}
	parts := strings.Split(lines[0], " ")
	if len(parts) != 3 || !isToken(parts[0]) || !strings.HasPrefix(parts[1], "/") {
		return nil, badRequest("malformed request line: want METHOD /path HTTP/1.1")
	}
	req := &request{method: parts[0], target: parts[1], header: http.Header{}, length: -1}
	switch parts[2] {
	case "HTTP/1.1":
		req.minor, req.keepAlive = 1, true
	case "HTTP/1.0":
	default:
		if strings.HasPrefix(parts[2], "HTTP/") {
			return nil, &Error{Status: http.StatusHTTPVersionNotSupported, Code: CodeBadRequest, Message: "only HTTP/1.1 and HTTP/1.0 are spoken here"}
		}
		return nil, badRequest("malformed request line: want METHOD /path HTTP/1.1")
	}
	u, err := url.ParseRequestURI(req.target)
	if err != nil {
		return nil, badRequest("malformed request target")
	}
	req.url = u
	for _, l := range lines[1:] {
		if l == "" || l[0] == ' ' || l[0] == '\t' {
			return nil, badRequest("malformed header line (folded lines are not allowed)")
		}
		name, value, ok := strings.Cut(l, ":")
		value = strings.Trim(value, " \t")
		if !ok || !isToken(name) || strings.ContainsFunc(value, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
			return nil, badRequest("malformed header line")
		}
		req.header.Add(http.CanonicalHeaderKey(name), value)
	}
	return req, req.framing()
}

// framing reads the headers that say how the body is sent and whether the
// connection stays open.
func (req *request) framing() error {
	h := req.header
	for i, v := range h.Values("Content-Length") {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || v[0] == '+' {
			return badRequest("malformed Content-Length")
		}
		if i > 0 && n != req.length {
			return badRequest("conflicting Content-Length headers")
		}
		req.length = n
	}
	if te := h.Values("Transfer-Encoding"); len(te) > 0 {
		switch {
		case req.minor == 0:
			return badRequest("Transfer-Encoding in an HTTP/1.0 request")
		case req.length >= 0:
			return badRequest("both Transfer-Encoding and Content-Length")
		case len(te) != 1 || !strings.EqualFold(te[0], "chunked"):
			return &Error{Status: http.StatusNotImplemented, Code: CodeBadRequest, Message: "only the chunked transfer coding is supported"}
		}
		req.chunked = true
	}
	for _, v := range h.Values("Connection") {
		for _, opt := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(opt), "close") {
				req.keepAlive = false
			}
		}
	}
	if e := h.Values("Expect"); len(e) > 0 {
		if len(e) != 1 || !strings.EqualFold(e[0], "100-continue") || req.minor == 0 {
			return &Error{Status: http.StatusExpectationFailed, Code: CodeBadRequest, Message: "only Expect: 100-continue is supported"}
		}
		req.expectContinue = true
	}
	return nil
}

// isToken reports whether s is an HTTP token (a method, a header name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// tooLarge is the answer to a body over limit bytes.
func tooLarge(limit int) *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
		Message: fmt.Sprintf("request body is larger than %d bytes", limit)}
}

// readBody reads the body req announces, at most limit bytes, into a
// buffer of its own. The caller zeroes all of it, up to its capacity.
func (cr *connReader) readBody(req *request, limit int) ([]byte, error) {
	switch {
	case req.chunked:
		return cr.readChunked(limit)
	case req.length > int64(limit):
		return nil, tooLarge(limit)
	case req.length <= 0:
		return nil, nil
	}
	body := make([]byte, req.length)
	if err := cr.readFull(body); err != nil {
		clear(body)
		return nil, err
	}
	return body, nil
}

// readChunked decodes a chunked body (RFC 9112, 7.1) into one buffer of
// limit bytes, so that it never grows and leaves a copy behind.
func (cr *connReader) readChunked(limit int) ([]byte, error) {
	body := make([]byte, limit)
	n := 0
	fail := func(err error) ([]byte, error) {
		clear(body)
		return nil, err
	}
	for {
		line, err := cr.readLine()
		if err != nil {
			return fail(chunkErr(err))
		}
		hex, _, _ := bytes.Cut(line, []byte(";")) // chunk extensions are ignored
		size, err := strconv.ParseUint(string(bytes.TrimRight(hex, " \t")), 16, 63)
		switch {
		case err != nil:
			return fail(badRequest("malformed chunk size"))
		case size > uint64(limit-n):
			return fail(tooLarge(limit))
		case size == 0:
			for { // trailer lines, ignored, up to the empty line
				line, err := cr.readLine()
				if err != nil {
					return fail(chunkErr(err))
				}
				if len(line) == 0 {
					return body[:n], nil
				}
			}
		}
		if err := cr.readFull(body[n : n+int(size)]); err != nil {
			return fail(err)
		}
		n += int(size)
		if line, err := cr.readLine(); err != nil || len(line) != 0 {
			return fail(chunkErr(err))
		}
	}
}

func chunkErr(err error) error {
	if err == nil || err == errFull {
		return badRequest("malformed chunked body")
	}
	return err
}
