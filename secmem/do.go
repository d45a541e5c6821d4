package secmem

// Do runs f, through which secrets pass on the stack and in registers
// (hashing with a key, decoding a signature), and then erases what f left
// there, as far as the build allows. f must not start goroutines, and must
// leave its results in memory the caller owns (a [Buffer]).
//
// Built with GOEXPERIMENT=runtimesecret (Go 1.26, linux/amd64 and arm64),
// Do is runtime/secret.Do: the registers and the whole stack f used are
// erased, and so is an old stack the runtime moved away from while f ran;
// heap memory f allocated is erased when the garbage collector frees it.
//
// In the default build Do overwrites f's stack frames itself: it makes the
// stack large enough before f runs, so that f does not move it (a move would
// leave the old stack behind, uncleared), zeroes scrubSize bytes below its
// own frame once f has returned, and zeroes the vector registers (amd64,
// arm64; see [Copy]). What stays out of reach: the general-purpose
// registers (8 bytes each; the code that runs next overwrites them),
// registers a signal saved on the signal stack while f ran, frames deeper
// than scrubSize (f needs about 2 KiB to hash), and a stack the garbage
// collector shrinks while f runs.
func Do(f func()) { do(f) }
