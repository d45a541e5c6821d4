package token

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/secmem"
)

const testdata = "testdata/htcondor-24.0"

type vectorCase struct {
	Name       string              `json:"name"`
	SignedWith string              `json:"signed_with"`
	Token      string              `json:"token"`
	Note       string              `json:"note"`
	Header     map[string]any      `json:"header"`
	Claims     map[string]any      `json:"claims"`
	Expect     map[string][]string `json:"expect"`
}

type vectorFile struct {
	TrustDomain string       `json:"trust_domain"`
	Cases       []vectorCase `json:"cases"`
}

// loadVectors reads vectors.json; tb may be a *testing.F.
func loadVectors(tb testing.TB) vectorFile {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, "vectors.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var v vectorFile
	if err := json.Unmarshal(b, &v); err != nil {
		tb.Fatal(err)
	}
	if len(v.Cases) == 0 {
		tb.Fatal("no cases in vectors.json")
	}
	return v
}

// vector returns the token of the named case.
func vector(tb testing.TB, name string) []byte {
	tb.Helper()
	for _, c := range loadVectors(tb).Cases {
		if c.Name == name {
			return []byte(c.Token)
		}
	}
	tb.Fatalf("no vector %q", name)
	return nil
}

// keyDir copies a testdata key folder to a temporary one with mode 0600
// files (git does not keep modes) and returns a KeyDir over it.
func keyDir(t *testing.T, folder string) KeyDir {
	t.Helper()
	dst := t.TempDir()
	testenv.CopyKeys(t, filepath.Join(testdata, folder), dst)
	return KeyDir{Dir: dst, WantUID: os.Getuid()}
}

// lockedKey returns kid's key from kr, copied out of its secmem buffer
// (wiped at the end of the test).
func lockedKey(t *testing.T, kr Keyring, kid string) []byte {
	t.Helper()
	b, err := kr.Key(kid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Wipe)
	return b.Bytes()
}

// heapKey copies a key out of its secmem buffer and wipes the buffer.
func heapKey(b *secmem.Buffer, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	defer b.Wipe()
	return bytes.Clone(b.Bytes()), nil
}

// rawKeyFile reads a key file from testdata as is.
func rawKeyFile(tb testing.TB, folder, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, folder, name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// craft builds a token from JSON header and payload with a dummy signature
// of n characters; only for structure checks.
func craft(header, payload string, n int) []byte {
	enc := base64.RawURLEncoding
	return []byte(enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload)) + "." + strings.Repeat("A", n))
}

const (
	hdr256  = `{"alg":"HS256","kid":"POOL"}`
	payBase = `{"iat":1795393154,"iss":"example.org","sub":"alice@example.org"}`
)
