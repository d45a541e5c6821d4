//go:build !amd64 && !arm64

package secmem

// clearRegisters is not implemented on this architecture: vector
// registers keep what copying a secret left in them.
func clearRegisters() {}
