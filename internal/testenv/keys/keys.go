// Package keys makes HTCondor signing keys and tokens for the tests and the
// benchmark: key files scrambled as condor_store_cred writes them, written
// in place or rolled out by rename as a site does, and tokens signed with
// them as a schedd would. It does not import testing (the benchmark is an
// ordinary program).
package keys

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"

	"github.com/tokend/tokend/token"
)

// NewFile returns the content of a new random key file: 64 random bytes,
// scrambled as condor_store_cred writes them.
func NewFile() []byte {
	key := make([]byte, 64)
	rand.Read(key)
	return token.Scramble(key)
}

// Write writes a key file at path with mode 0600, in place: a file that is
// there keeps its inode (and gets mode 0600).
func Write(path string, file []byte) error {
	if err := os.WriteFile(path, file, 0o600); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// Install writes a key file beside path and renames it over path, as a
// careful site rolls out a new key: mode 0600, owned by uid:gid (-1 keeps
// the writer's).
func Install(path string, file []byte, uid, gid int) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".new")
	if err := Write(tmp, file); err != nil {
		return err
	}
	if err := os.Chown(tmp, uid, gid); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Sign makes a token with claims c, signed with the key kid derives from a
// key file's content.
func Sign(file []byte, kid string, c token.Claims) ([]byte, error) {
	key := token.DeriveKey(kid, file)
	if key == nil {
		return nil, errors.New("cannot derive a signing key from the key file")
	}
	defer clear(key)
	return token.Sign(c, kid, key)
}

// SignFrom makes a token with claims c, signed with key file kid of dir.
// The file is read as it is: the checks HTCondor makes of a key file's
// owner and mode are the code under test's job, not the signer's.
func SignFrom(dir, kid string, c token.Claims) ([]byte, error) {
	file, err := os.ReadFile(filepath.Join(dir, kid))
	if err != nil {
		return nil, err
	}
	defer clear(file)
	return Sign(file, kid, c)
}
