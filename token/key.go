package token

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/tokend/tokend/secmem"
)

// PoolKeyName is the kid of the pool signing key.
const PoolKeyName = "POOL"

// maxKeyFileSize bounds what ReadKeyFile reads; real key files are 64 bytes
// or a short password.
const maxKeyFileSize = 64 << 10

// scrambleMask is HTCondor's fixed XOR mask for stored passwords and keys.
var scrambleMask = [4]byte{0xDE, 0xAD, 0xBE, 0xEF}

// Unscramble undoes HTCondor's scrambling of a key file's bytes. It returns a
// new slice; file is not modified.
func Unscramble(file []byte) []byte {
	out := make([]byte, len(file))
	for i, b := range file {
		out[i] = b ^ scrambleMask[i%len(scrambleMask)]
	}
	return out
}

// Scramble turns key bytes into key file content (XOR is its own inverse).
func Scramble(key []byte) []byte { return Unscramble(key) }

// KeySize is the size of a derived key.
const KeySize = 32

// DeriveKey returns the 32-byte HMAC key that HTCondor derives for kid from
// a key file's raw (scrambled) bytes: unscramble; for the pool key (kid ""
// or "POOL") double the bytes; then HKDF-SHA256 with salt "htcondor" and
// info "master jwt".
//
// It is [DeriveLocked] with the key copied to the Go heap, for callers that
// keep keys themselves: they clear it when done. It returns nil only if
// locked memory cannot be had (mmap fails); [Verify] rejects a nil key.
func DeriveKey(kid string, file []byte) []byte {
	b, err := DeriveLocked(kid, file)
	if err != nil {
		return nil
	}
	defer b.Wipe()
	key := make([]byte, KeySize)
	secmem.Copy(key, b.Bytes())
	return key
}

// DeriveLocked derives kid's key as [DeriveKey] does, into a secmem
// buffer that the caller wipes. The unscrambled and doubled key file, the
// HKDF pseudorandom key and the HMAC pads live in secmem buffers too, wiped
// before it returns; what hashing leaves on the stack is erased
// ([secmem.Do]).
func DeriveLocked(kid string, file []byte) (*secmem.Buffer, error) {
	n := len(file)
	pool := kid == "" || kid == PoolKeyName
	if pool {
		n *= 2
	}
	ikm, err := secmem.New(n)
	if err != nil {
		return nil, err
	}
	defer ikm.Wipe()
	key, err := secmem.New(KeySize)
	if err != nil {
		return nil, err
	}
	secmem.Do(func() {
		k := ikm.Bytes()
		for i, b := range file {
			k[i] = b ^ scrambleMask[i%len(scrambleMask)]
		}
		if pool {
			copy(k[len(file):], k[:len(file)])
		}
		err = hkdf32(key.Bytes(), k)
	})
	if err != nil {
		key.Wipe()
		return nil, err
	}
	return key, nil
}

// LoadKey reads a key file as [ReadKeyFile] does and derives kid's key from
// it ([DeriveLocked]) into a secmem buffer that the caller wipes. The file's
// bytes are wiped once the key is derived.
func LoadKey(path, kid string, wantUID int) (*secmem.Buffer, error) {
	file, err := ReadKeyFile(path, wantUID)
	if err != nil {
		return nil, err
	}
	defer file.Wipe()
	key, err := DeriveLocked(kid, file.Bytes())
	if err != nil {
		return nil, fmt.Errorf("cannot derive a key from %s: %w", path, err)
	}
	return key, nil
}

// ReadKeyFile reads a key file the way HTCondor accepts one: a regular file,
// owned by wantUID (unless wantUID < 0), with no group or other permission
// bits, at most 64 KiB. Errors say what to fix and never hold key bytes.
// The bytes are read straight into a secmem buffer, which the caller wipes.
func ReadKeyFile(path string, wantUID int) (*secmem.Buffer, error) {
	// O_NONBLOCK: a FIFO put in place of the key must not hang the open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot open key file %s: %w", path, pathErr(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot stat key file %s: %w", path, pathErr(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s is not a regular file", path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && wantUID >= 0 && int64(st.Uid) != int64(wantUID) {
		return nil, fmt.Errorf("key file %s is owned by uid %d, want uid %d: chown %d %s", path, st.Uid, wantUID, wantUID, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s must not be readable by group or others (mode %04o): chmod 600 %s", path, perm, path)
	}
	size := fi.Size()
	switch {
	case size == 0:
		return nil, fmt.Errorf("key file %s is empty", path)
	case size > maxKeyFileSize:
		return nil, fmt.Errorf("key file %s is larger than %d KiB", path, maxKeyFileSize>>10)
	}
	// Like HTCondor, read exactly the size fstat reported.
	buf, err := secmem.New(int(size))
	if err != nil {
		return nil, fmt.Errorf("cannot hold key file %s in memory: %w", path, err)
	}
	if _, err := io.ReadFull(f, buf.Bytes()); err != nil {
		buf.Wipe()
		return nil, fmt.Errorf("cannot read key file %s: %w", path, pathErr(err))
	}
	return buf, nil
}

// pathErr drops the *fs.PathError wrapper, whose text repeats the path.
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Keyring maps a kid to its derived HMAC key.
type Keyring interface {
	// Key returns the derived key for kid in a secmem buffer, which the
	// caller wipes; the error wraps ErrUnknownKey when there is no such
	// key, ErrKeyUnavailable when it cannot be used.
	Key(kid string) (*secmem.Buffer, error)
}

// KeyDir is a Keyring over a SEC_PASSWORD_DIRECTORY-like folder. The pool
// key (kid "POOL" or "") is PoolFile if set, else Dir/POOL; any other kid is
// Dir/<kid>. Each call reads the file again, as HTCondor does, so a
// rotation is seen at once.
type KeyDir struct {
	Dir      string
	PoolFile string // SEC_TOKEN_POOL_SIGNING_KEY_FILE; "" means Dir/POOL
	WantUID  int    // owner key files must have; < 0 skips the check
}

// Key implements [Keyring]. A kid that is not a plain file name, or a
// missing file, is unknown ([ErrUnknownKey]); a file that exists but is
// refused (owner, mode, type, size, I/O) is [ErrKeyUnavailable].
func (d KeyDir) Key(kid string) (*secmem.Buffer, error) {
	path, err := d.path(kid)
	if err != nil {
		return nil, err
	}
	key, err := LoadKey(path, kid, d.WantUID)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w %q: %w", ErrUnknownKey, kid, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyUnavailable, err)
	}
	return key, nil
}

func (d KeyDir) path(kid string) (string, error) {
	if kid == "" || kid == PoolKeyName {
		if d.PoolFile != "" {
			return d.PoolFile, nil
		}
		kid = PoolKeyName
	} else if !plainName(kid) {
		return "", fmt.Errorf("%w %q: not a plain file name", ErrUnknownKey, kid)
	}
	if d.Dir == "" {
		return "", fmt.Errorf("%w %q: no key directory", ErrUnknownKey, kid)
	}
	return filepath.Join(d.Dir, kid), nil
}

// plainName reports whether name is a single path element that names a
// file in a directory.
func plainName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}
