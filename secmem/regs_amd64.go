package secmem

// readRegisters stores X0-X15 into out (for the test of clearRegisters).
//
//go:noescape
func readRegisters(out *[16][16]byte)
