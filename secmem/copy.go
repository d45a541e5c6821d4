package secmem

// Copy is copy for secrets: it copies src into dst and returns the number
// of bytes copied, then zeroes the vector registers the copy went through
// (amd64 and arm64), so that no signal saves pieces of the secret on a
// signal stack later. A signal during the copy itself still can.
func Copy(dst, src []byte) int {
	n := copy(dst, src)
	clearRegisters()
	return n
}
