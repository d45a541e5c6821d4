//go:build amd64 || arm64

package secmem

// clearRegisters zeroes the vector registers, through which copy (the
// runtime's memmove) and hashing move data 16 bytes at a time. They keep
// it until other code overwrites them, and a signal arriving meanwhile
// (the runtime's preemption signal, for one) makes the kernel save them on
// the thread's signal stack, in memory that nobody clears.
func clearRegisters()
