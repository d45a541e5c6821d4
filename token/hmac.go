package token

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding"
	"errors"
	"hash"

	"github.com/tokend/tokend/secmem"
)

// HMAC (RFC 2104) and HKDF (RFC 5869) computed here rather than with
// crypto/hmac and crypto/hkdf, which keep the key's padded blocks and the
// hash states derived from them on the Go heap, where nothing clears them.
// Here K0 and both pads live in a secmem buffer; the one hash object on the
// heap holds a pad-derived state only while a MAC is computed and is
// overwritten before mac returns. Callers run mac inside secmem.Do, which
// erases what hashing leaves on the stack.

// hashFor returns the hash of an accepted alg and its output size.
func hashFor(alg string) (func() hash.Hash, int) {
	switch alg {
	case "HS256":
		return sha256.New, sha256.Size
	case "HS384":
		return sha512.New384, sha512.Size384
	case "HS512":
		return sha512.New, sha512.Size
	}
	return nil, 0
}

var errShortOutput = errors.New("token: mac output buffer too small")

// mac writes HMAC(key, msg[0] || msg[1] || ...) into out[:size].
func mac(out []byte, newHash func() hash.Hash, key []byte, msg ...[]byte) error {
	h := newHash()
	defer wipeHash(h)
	bs, size := h.BlockSize(), h.Size()
	if len(out) < size {
		return errShortOutput
	}
	mem, err := secmem.New(2*bs + size)
	if err != nil {
		return err
	}
	defer mem.Wipe()
	b := mem.Bytes()
	// Full slice expressions: Sum appends, and must append in place.
	k0, pad, inner := b[:bs:bs], b[bs:2*bs:2*bs], b[2*bs:2*bs:2*bs+size]
	if len(key) > bs {
		h.Write(key)
		h.Sum(k0[:0])
		wipeHash(h)
	} else {
		copy(k0, key)
	}
	xorInto(pad, k0, 0x36)
	h.Write(pad)
	for _, m := range msg {
		h.Write(m)
	}
	inner = h.Sum(inner)
	wipeHash(h)
	xorInto(pad, k0, 0x5c)
	h.Write(pad)
	h.Write(inner)
	h.Sum(out[:0:size])
	return nil
}

func xorInto(dst, src []byte, c byte) {
	for i := range dst {
		dst[i] = src[i] ^ c
	}
}

// wipeHash overwrites the state and the buffered input of a standard
// library hash in place. Reset restores the initial state but leaves the
// buffered bytes; the marshaled state of a reset hash has a zero buffer,
// and loading it overwrites them.
func wipeHash(h hash.Hash) {
	h.Reset()
	m, ok1 := h.(encoding.BinaryMarshaler)
	u, ok2 := h.(encoding.BinaryUnmarshaler)
	if !ok1 || !ok2 {
		panic("token: hash cannot be wiped")
	}
	st, err := m.MarshalBinary()
	if err == nil {
		err = u.UnmarshalBinary(st)
	}
	if err != nil {
		panic("token: hash cannot be wiped: " + err.Error())
	}
}

// HTCondor's HKDF-SHA256 parameters for token keys.
var (
	hkdfSalt = []byte("htcondor")
	hkdfInfo = []byte("master jwt")
)

// hkdf32 writes HKDF-SHA256(ikm, hkdfSalt, hkdfInfo) into out, 32 bytes:
// one block of Expand. The pseudorandom key lives in a secmem buffer.
func hkdf32(out, ikm []byte) error {
	prk, err := secmem.New(sha256.Size)
	if err != nil {
		return err
	}
	defer prk.Wipe()
	if err := mac(prk.Bytes(), sha256.New, hkdfSalt, ikm); err != nil { // Extract
		return err
	}
	return mac(out, sha256.New, prk.Bytes(), hkdfInfo, []byte{1}) // Expand: T(1)
}
