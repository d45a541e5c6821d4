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
	mlock = func([]byte) error { return unix.EPERM }
	t.Cleanup(func() { mlock = unix.Mlock })
	var warned int
	SetWarn(func(error) { warned++ })
	t.Cleanup(func() { SetWarn(func(error) {}) })
	for i := 0; i < 3; i++ {
		b, err := New(10)
		if err != nil {
			t.Fatalf("New must work without mlock: %v", err)
		}
		b.Wipe()
	}
	if warned != 1 || !LockFailed() {
		t.Fatalf("warned %d times, LockFailed=%v; want once, true", warned, LockFailed())
	}
}
