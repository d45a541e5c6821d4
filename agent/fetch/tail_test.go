package fetch

import (
	"strings"
	"testing"

	"github.com/tokend/tokend/internal/logsafe"
)

// A token cut in half where stderr's tail begins would be too short to
// recognise as one: its line fragment is dropped, not shown.
func TestTailDropsACutLine(t *testing.T) {
	sig := strings.Repeat("s", 30) // shorter than anything redact recognises alone
	for _, lead := range []int{0, 1, 100} {
		var tl tail
		tl.Write([]byte(strings.Repeat("x", lead) + "header.payload." + strings.Repeat("p", maxStderr) + sig + "\n"))
		tl.Write([]byte("Failed to request a session token: SECMAN:2007\n"))
		msg := tl.message()
		if strings.Contains(msg, sig) || strings.Contains(msg, "ppp") {
			t.Fatalf("lead %d: the cut line reached the message: %.80q", lead, msg)
		}
		if !strings.Contains(msg, "SECMAN:2007") {
			t.Fatalf("lead %d: the message lost HTCondor's error: %q", lead, msg)
		}
	}
}

// A fetch command's stderr cannot forge log lines: newlines and control
// characters come out escaped, on one line of bounded length.
func TestTailMessageOneLine(t *testing.T) {
	var tl tail
	tl.Write([]byte("Failed to fetch\nNov 30 12:00:00 host sshd[1]: Accepted password for root\x1b[2K\r\n"))
	msg := tl.message()
	if want := `Failed to fetch\nNov 30 12:00:00 host sshd[1]: Accepted password for root\x1b[2K`; msg != want {
		t.Fatalf("message %q, want %q", msg, want)
	}
	tl.Write([]byte(strings.Repeat("error\n", 1000)))
	msg = tl.message()
	if len(msg) > logsafe.Max || strings.ContainsAny(msg, "\n\r") || !strings.HasSuffix(msg, `error`) {
		t.Fatalf("a long stderr gave %d bytes: %q", len(msg), msg)
	}
}
