//go:build !goexperiment.runtimesecret

package secmem

// do grows the stack first (before any secret is on it), runs f, then
// zeroes the frames f used and the vector registers.
func do(f func()) {
	scrub()
	f()
	scrub()
	clearRegisters()
}

// RuntimeSecret reports whether Do is runtime/secret.Do (a build with
// GOEXPERIMENT=runtimesecret).
const RuntimeSecret = false

// scrubSize is how much stack below Do's frame is zeroed after f.
const scrubSize = 8 << 10

// scrub zeroes scrubSize bytes of stack below the caller's frame: the
// compiler must zero b, since keep reads it.
//
//go:noinline
func scrub() {
	var b [scrubSize]byte
	keep(b[:])
}

// keep reads b so that zeroing it cannot be optimized away; b does not
// escape, so it stays on the stack.
//
//go:noinline
func keep(b []byte) {
	if b[0]|b[len(b)-1] != 0 {
		panic("secmem: stack scrub buffer not zeroed")
	}
}
