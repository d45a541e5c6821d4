package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Sections of the report, in the order they are printed.
const (
	secRead     = "reading (warm caches; reader: a process of the mount's owner)"
	secStart    = "start and stop (verifyd, local fetch)"
	secMemory   = "memory"
	secRotation = "key rotation (verifyd process, agents following it)"
	secSlots    = "refetch slots (verifyd's schedule alone on a fake clock, refetch_rate 100/s)"
	secSession  = "login sessions (tokend session open|close)"
)

var sections = []string{secRead, secStart, secMemory, secRotation, secSlots, secSession}

// row is one line of the report: a figure, the baseline it is compared
// with (measured in the same run), their ratio, and the goal.
type row struct {
	section  string
	figure   string
	value    string
	baseline string // value and what it is
	ratio    string
	goal     string
	verdict  string // "ok", "OVER", or "" when there is no goal
}

// add records a row.
func (b *bench) add(r row) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rows = append(b.rows, r)
}

// note records a line printed under the table.
func (b *bench) note(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

// skip records a figure that could not be measured, and why.
func (b *bench) skip(section, figure, why string) {
	b.add(row{section: section, figure: figure, value: "not measured: " + why})
}

// print writes the table and the notes.
func (b *bench) print(w io.Writer) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "tokend benchmark — ratios are tokend ÷ baseline, cost per operation (below 1 is faster than the baseline)")
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	// One tabwriter block: every line has the same cells, blank ones too,
	// so that the columns line up across sections.
	line := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }
	line("", "", "", "", "", "")
	line("FIGURE", "TOKEND", "BASELINE (same run)", "RATIO", "GOAL", "")
	for _, section := range sections {
		first := true
		for _, r := range b.rows {
			if r.section != section {
				continue
			}
			if first {
				line("", "", "", "", "", "")
				line(strings.ToUpper(section), "", "", "", "", "")
				first = false
			}
			line("  "+r.figure, r.value, r.baseline, r.ratio, r.goal, r.verdict)
		}
	}
	tw.Flush()
	if len(b.notes) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range b.notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
}

// verdict says whether v meets a goal of at most limit.
func verdict(v, limit float64) string {
	if v <= limit {
		return "ok"
	}
	return "OVER"
}

func ratio(v float64) string { return fmt.Sprintf("%.2fx", v) }

// dur formats a duration with three significant digits.
func dur(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%d ns", d.Nanoseconds())
	case d < time.Millisecond:
		return fmt.Sprintf("%.3g µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.3g ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.3g s", d.Seconds())
}

func ns(f float64) string { return dur(time.Duration(f)) }

// kib formats a size given in KiB.
func kib(k int64) string {
	if k >= 10*1024 {
		return fmt.Sprintf("%.0f MiB", float64(k)/1024)
	}
	if k >= 1024 {
		return fmt.Sprintf("%.1f MiB", float64(k)/1024)
	}
	return fmt.Sprintf("%d KiB", k)
}

func perSec(f float64) string {
	if f >= 1000 {
		return fmt.Sprintf("%.3gk/s", f/1000)
	}
	return fmt.Sprintf("%.3g/s", f)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianDur(ds []time.Duration) time.Duration {
	f := make([]float64, len(ds))
	for i, d := range ds {
		f[i] = float64(d)
	}
	return time.Duration(median(f))
}

// histogram counts the times in consecutive buckets of width w from start.
func histogram(ts []time.Time, start time.Time, w time.Duration) []int {
	var out []int
	for _, t := range ts {
		i := int(t.Sub(start) / w)
		if i < 0 {
			continue
		}
		for len(out) <= i {
			out = append(out, 0)
		}
		out[i]++
	}
	return out
}

// maxInWindow returns the largest number of times that fall in any window
// of width w (a window starting at each time).
func maxInWindow(ts []time.Time, w time.Duration) int {
	s := slices.Clone(ts)
	slices.SortFunc(s, func(a, b time.Time) int { return a.Compare(b) })
	best, j := 0, 0
	for i := range s {
		for j < len(s) && s[j].Sub(s[i]) < w {
			j++
		}
		best = max(best, j-i)
	}
	return best
}
