package memscan

import "unsafe"

// uintptrOf is the address of b's first byte.
func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// Of returns the range b occupies, to leave it out of a scan.
func Of(b []byte) Range {
	p := uint64(uintptrOf(b))
	return Range{p, p + uint64(cap(b))}
}
