package token

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"reflect"
	"testing"
	"time"

	"github.com/tokend/tokend/secmem"
)

// mac agrees with crypto/hmac for every alg and key length: shorter than a
// block, a whole block, longer (hashed first), and empty.
func TestMACMatchesCryptoHMAC(t *testing.T) {
	msg := []byte("eyJhbGciOiJIUzI1NiIsImtpZCI6IlBPT0wifQ.eyJpYXQiOjE3OTUzOTMxNTR9")
	for _, alg := range []string{"HS256", "HS384", "HS512"} {
		newHash, size := hashFor(alg)
		bs := newHash().BlockSize()
		for _, n := range []int{0, 1, 32, bs - 1, bs, bs + 1, 3 * bs} {
			key := bytes.Repeat([]byte{byte(n)}, n)
			want := hmac.New(newHash, key)
			want.Write(msg)
			got := make([]byte, size+8) // mac writes only size bytes
			if err := mac(got, newHash, key, msg[:10], msg[10:]); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[:size], want.Sum(nil)) || !bytes.Equal(got[size:], make([]byte, 8)) {
				t.Errorf("%s, %d-byte key: mac differs from crypto/hmac", alg, n)
			}
		}
		if err := mac(make([]byte, size-1), newHash, []byte("k"), msg); err == nil {
			t.Errorf("%s: mac wrote into a short buffer", alg)
		}
	}
}

func TestHKDFMatchesCryptoHKDF(t *testing.T) {
	for _, ikm := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("key"), 50)} {
		want, err := hkdf.Key(sha256.New, ikm, hkdfSalt, string(hkdfInfo), KeySize)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, KeySize)
		if err := hkdf32(got, ikm); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%d-byte ikm: hkdf32 differs from crypto/hkdf", len(ikm))
		}
	}
}

// wipeHash leaves nothing of what was hashed in the hash object: its state,
// buffered bytes and length are those of a new one.
func TestWipeHashLeavesAFreshHash(t *testing.T) {
	for _, alg := range []string{"HS256", "HS384", "HS512"} {
		newHash, _ := hashFor(alg)
		h := newHash()
		h.Write(bytes.Repeat([]byte{0xA5}, 3*h.BlockSize()+7)) // a state and a partial block
		h.Reset()
		if reflect.DeepEqual(h, newHash()) {
			t.Fatalf("%s: Reset alone clears the buffered bytes: the comparison cannot tell", alg)
		}
		wipeHash(h)
		if fresh := newHash(); !reflect.DeepEqual(h, fresh) {
			t.Errorf("%s: after wipeHash the hash differs from a new one", alg)
		}
	}
}

// Every secmem buffer the package takes is wiped before it returns.
func TestNoBufferLeftLive(t *testing.T) {
	kd := keyDir(t, "keys")
	raw := vector(t, "pool-plain")
	before := secmem.Live()
	key, err := kd.Key("POOL")
	if err != nil {
		t.Fatal(err)
	}
	if secmem.Live() != before+1 {
		t.Fatalf("Key holds %d buffers, want 1 (the key)", secmem.Live()-before)
	}
	if err := Verify(raw, key.Bytes()); err != nil {
		t.Fatal(err)
	}
	tok, err := Sign(Claims{Issuer: "i", Subject: "s", Lifetime: time.Hour}, "POOL", key.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Check(tok, time.Now(), 0, nil, kd); err != nil {
		t.Fatal(err)
	}
	if err := Verify(tok, make([]byte, 5)); err == nil {
		t.Fatal("verified with a wrong key")
	}
	DeriveKey("AP", rawKeyFile(t, "keys", "AP"))
	key.Wipe()
	if n := secmem.Live() - before; n != 0 {
		t.Errorf("%d secmem buffers left live", n)
	}
}

// A signature altered in any one character no longer verifies.
func TestVerifyRefusesAlteredSignature(t *testing.T) {
	key := DeriveKey("POOL", rawKeyFile(t, "keys", "POOL"))
	raw := vector(t, "pool-plain")
	dot := bytes.LastIndexByte(raw, '.')
	for i := dot + 1; i < len(raw)-1; i++ { // the last character also carries padding bits
		alt := bytes.Clone(raw)
		alt[i] = map[bool]byte{true: 'A', false: 'B'}[alt[i] != 'A']
		if err := Verify(alt, key); err != ErrRotatedKey {
			t.Fatalf("signature altered at %d: %v, want ErrRotatedKey", i-dot-1, err)
		}
	}
}
