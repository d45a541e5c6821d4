package fusefs

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/tokend/tokend/store"
)

// TestFileLargerThanOneRequest: maxWrite bounds each READ and WRITE the
// kernel sends, not a file. A file of several requests is written by one
// write(2), which the kernel splits (the draft stays pending until its last
// token is whole), and read back whole.
func TestFileLargerThanOneRequest(t *testing.T) { inBothOpenModes(t, fileLargerThanOneRequest) }

func fileLargerThanOneRequest(t *testing.T, mode func(*Options)) {
	f := mount(t, store.Limits{MaxFiles: 4, MaxFileSize: 4 * maxWrite, MaxNameLen: 32}, mode)
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("max_read=%d", maxWrite)
	found := false
	for line := range strings.SplitSeq(string(mounts), "\n") {
		if fields := strings.Fields(line); len(fields) > 4 && fields[4] == f.dir {
			found = true
			if !strings.Contains(line, want) {
				t.Errorf("the mount's options lack %s: %s", want, line)
			}
		}
	}
	if !found {
		t.Fatalf("%s is not in /proc/self/mountinfo", f.dir)
	}

	var content []byte
	for len(content) < 2*maxWrite+maxWrite/2 {
		content = append(append(content, newToken(t, "big")...), '\n')
	}
	p := f.path("big")
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, ok := f.content("big"); !ok || got != string(content) {
		t.Fatalf("the store holds %d bytes (%v), want the %d written", len(got), ok, len(content))
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Errorf("read back %d bytes, want the %d written", len(got), len(content))
	}
}
