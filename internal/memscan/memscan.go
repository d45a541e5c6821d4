// Package memscan searches the memory of a live process for byte strings:
// the tests' measure of "no copy of a secret left". It reads every readable
// mapping through /proc/PID/mem (root may read any process, a process
// itself), and tells locked mappings (mlock, from /proc/PID/smaps) from the
// rest.
package memscan

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mapping is one line of /proc/PID/maps with its smaps flags.
type Mapping struct {
	Start, End uint64
	Perms      string // e.g. "rw-p"
	Name       string // path, [heap], [stack], or "" for anonymous memory
	Locked     bool   // VmFlags has "lo": mlock'ed
}

func (m Mapping) String() string {
	lock := ""
	if m.Locked {
		lock = " locked"
	}
	return fmt.Sprintf("%x-%x %s%s %s", m.Start, m.End, m.Perms, lock, m.Name)
}

// Hit is one place a needle was found.
type Hit struct {
	Needle  string // its name
	Addr    uint64
	Mapping Mapping
}

func (h Hit) String() string { return fmt.Sprintf("%s at %#x in %s", h.Needle, h.Addr, h.Mapping) }

// Maps reads the mappings of pid from /proc/PID/smaps.
func Maps(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var maps []Mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if fields[0] == "VmFlags:" {
			if len(maps) > 0 {
				for _, fl := range fields[1:] {
					if fl == "lo" {
						maps[len(maps)-1].Locked = true
					}
				}
			}
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok || len(fields) < 5 || strings.HasSuffix(fields[0], ":") {
			continue // a "Key: value" line
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		m := Mapping{Start: start, End: end, Perms: fields[1]}
		if len(fields) >= 6 {
			m.Name = strings.Join(fields[5:], " ")
		}
		maps = append(maps, m)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(maps) == 0 {
		return nil, fmt.Errorf("no mappings in /proc/%d/smaps", pid)
	}
	return maps, nil
}

// Range is a span of addresses left out of a scan: [Start, End).
type Range struct{ Start, End uint64 }

const chunkSize = 1 << 20

// Scan searches every readable mapping of pid for each needle (name to
// bytes) and returns every hit. Ranges in skip are not read (the scanning
// process's own copy of a needle, when pid is itself); neither is the
// scanner's read buffer. Mappings the kernel refuses to read ([vvar],
// device memory) are returned in unread.
func Scan(pid int, needles map[string][]byte, skip ...Range) (hits []Hit, unread []Mapping, err error) {
	longest := 0
	for name, n := range needles {
		if len(n) == 0 {
			return nil, nil, fmt.Errorf("memscan: needle %s is empty", name)
		}
		longest = max(longest, len(n))
	}
	maps, err := Maps(pid)
	if err != nil {
		return nil, nil, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, nil, err
	}
	defer mem.Close()
	// The read buffer lives outside the Go heap, so that it can be left
	// out of a scan of this very process.
	buf, err := unix.Mmap(-1, 0, chunkSize+longest, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, err
	}
	defer unix.Munmap(buf)
	if pid == os.Getpid() {
		start := uint64(uintptrOf(buf))
		skip = append(skip, Range{start, start + uint64(len(buf))})
	}
	for _, m := range maps {
		if m.Perms[0] != 'r' {
			continue
		}
		for _, part := range without(Range{m.Start, m.End}, skip) {
			h, err := scanRange(mem, buf, part, m, needles, longest)
			if errors.Is(err, syscall.EIO) || errors.Is(err, syscall.EFAULT) {
				unread = append(unread, m)
				break
			}
			if err != nil {
				return nil, nil, fmt.Errorf("memscan: reading %s: %w", m, err)
			}
			hits = append(hits, h...)
		}
	}
	return hits, unread, nil
}

// scanRange reads r in chunks that overlap by longest-1 bytes, so that a
// needle across a chunk boundary is found once.
func scanRange(mem *os.File, buf []byte, r Range, m Mapping, needles map[string][]byte, longest int) ([]Hit, error) {
	var hits []Hit
	carry := 0 // bytes at the start of buf kept from the previous chunk
	for off := r.Start; off < r.End; {
		n := int(min(uint64(chunkSize), r.End-off))
		got, err := mem.ReadAt(buf[carry:carry+n], int64(off))
		if err != nil && !(errors.Is(err, io.EOF) && got == n) {
			return nil, err
		}
		data := buf[:carry+n]
		base := off - uint64(carry)
		for name, needle := range needles {
			for i := 0; ; {
				j := bytes.Index(data[i:], needle)
				if j < 0 {
					break
				}
				// A hit wholly inside the carried bytes was reported
				// with the previous chunk.
				if i+j+len(needle) > carry {
					hits = append(hits, Hit{Needle: name, Addr: base + uint64(i+j), Mapping: m})
				}
				i += j + 1
			}
		}
		off += uint64(n)
		carry = min(longest-1, len(data))
		copy(buf, data[len(data)-carry:])
	}
	clear(buf)
	return hits, nil
}

// without returns r minus every range in skip.
func without(r Range, skip []Range) []Range {
	parts := []Range{r}
	for _, s := range skip {
		var next []Range
		for _, p := range parts {
			if s.End <= p.Start || s.Start >= p.End {
				next = append(next, p)
				continue
			}
			if p.Start < s.Start {
				next = append(next, Range{p.Start, s.Start})
			}
			if s.End < p.End {
				next = append(next, Range{s.End, p.End})
			}
		}
		parts = next
	}
	return parts
}
