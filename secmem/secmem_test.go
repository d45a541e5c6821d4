package secmem

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

func TestBufferHoldsAndWipes(t *testing.T) {
	secret := []byte("eyJhbGciOiJIUzI1NiJ9.secret.sig")
	b, err := From(secret)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), secret) || b.Len() != len(secret) {
		t.Fatalf("Bytes() = %q, want %q", b.Bytes(), secret)
	}
	if cap(b.Bytes()) != len(secret) {
		t.Fatalf("Bytes() has spare capacity %d: appends would write into the mapping", cap(b.Bytes()))
	}
	b.Wipe()
	b.Wipe() // twice is harmless
	defer func() {
		if recover() == nil {
			t.Fatal("Bytes after Wipe did not panic")
		}
	}()
	b.Bytes()
}

func TestEmptyBuffer(t *testing.T) {
	b, err := New(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Bytes()) != 0 {
		t.Fatalf("len = %d", len(b.Bytes()))
	}
	b.Wipe()
}

func TestLockFailureWarnsOnce(t *testing.T) {
	fresh(t)
	mlock = func([]byte) error { return unix.EPERM }
	var warned int
	SetWarn(func(error) { warned++ })
	for _, n := range []int{10, 3000, 5000} {
		b, err := New(n)
		if err != nil {
			t.Fatalf("New must work without mlock: %v", err)
		}
		b.Wipe()
	}
	if warned != 1 || !LockFailed() {
		t.Fatalf("warned %d times, LockFailed=%v; want once, true", warned, LockFailed())
	}
}
