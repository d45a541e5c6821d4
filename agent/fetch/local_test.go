package fetch

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/token"
)

func TestLocal(t *testing.T) {
	tests := []struct {
		name    string
		keyName string // file written in the key dir; "" = none
		mode    os.FileMode
		opts    Options
		req     Request

		wantSub, wantScope string
		wantLifetime       int64  // exp - iat; 0 = no exp
		wantErr            string // substring of Error()
	}{
		{
			name: "pool key", keyName: "POOL", mode: 0o600,
			opts:    Options{Issuer: "pool.example", User: "alice", Authz: []string{"READ"}, Lifetime: time.Hour},
			wantSub: "alice@pool.example", wantScope: "condor:/READ", wantLifetime: 3600,
		},
		{
			name: "request overrides", keyName: "POOL", mode: 0o600,
			opts:    Options{Issuer: "pool.example", Identity: "bob@example.org", Authz: []string{"READ"}, Lifetime: time.Hour},
			req:     Request{Lifetime: 90 * time.Second, Authz: []string{"READ", "WRITE"}},
			wantSub: "bob@example.org", wantScope: "condor:/READ condor:/WRITE", wantLifetime: 90,
		},
		{
			name: "named key", keyName: "site", mode: 0o600,
			opts:    Options{KeyName: "site", Issuer: "pool.example", User: "carol"},
			wantSub: "carol@pool.example",
		},
		{
			name: "key readable by others", keyName: "POOL", mode: 0o644,
			opts:    Options{Issuer: "pool.example", User: "alice"},
			wantErr: "chmod 600",
		},
		{
			name:    "missing key",
			opts:    Options{Issuer: "pool.example", User: "alice"},
			wantErr: "no such file or directory: copy the pool's signing key there",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := keys.NewFile()
			if tt.keyName != "" {
				path := filepath.Join(dir, tt.keyName)
				if err := os.WriteFile(path, file, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tt.mode); err != nil {
					t.Fatal(err)
				}
			}
			o := tt.opts
			o.Method, o.KeyDir = "local", dir
			f, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.Fetch(context.Background(), tt.req, nil)
			if tt.wantErr != "" {
				if err == nil {
					got.Wipe()
					t.Fatalf("Fetch succeeded, want an error with %q", tt.wantErr)
				}
				t.Logf("error: %v", err)
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), filepath.Join(dir, "POOL")) {
					t.Errorf("error %q, want it to contain %q and the key file's path", err, tt.wantErr)
				}
				if fe := asError(t, err); fe.Method != "local" {
					t.Errorf("Method %q", fe.Method)
				}
				return
			}
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			defer got.Wipe()
			kid := tt.keyName
			if err := token.Verify(got.Bytes(), token.DeriveKey(kid, file)); err != nil {
				t.Errorf("token does not verify with the key file: %v", err)
			}
			tok, err := token.Parse(got.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if tok.Kid != kid || tok.Iss != "pool.example" || tok.Sub != tt.wantSub || tok.Scope != tt.wantScope {
				t.Errorf("token %+v, want kid %s sub %s scope %q", tok, kid, tt.wantSub, tt.wantScope)
			}
			if lt := tok.Exp - tok.Iat; tok.Exp != 0 && lt != tt.wantLifetime || tok.Exp == 0 && tt.wantLifetime != 0 {
				t.Errorf("lifetime %d, want %d", lt, tt.wantLifetime)
			}
		})
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"default", Options{}, ""},
		{"exec", Options{Method: "exec", Command: []string{"/bin/true"}}, ""},
		{"request", Options{Method: "request"}, ""},
		{"local", Options{Method: "local", KeyDir: "/nonexistent", Issuer: "pool.example"}, ""},
		{"unknown method", Options{Method: "fetchit"}, `unknown method "fetchit"`},
		{"negative timeout", Options{Timeout: -time.Second}, "negative timeout"},
		{"negative lifetime", Options{Lifetime: -time.Second}, "negative lifetime"},
		{"bad authz", Options{Authz: []string{"READ WRITE"}}, "has a space"},
		{"empty program", Options{Command: []string{""}}, "empty program"},
		{"request key", Options{Method: "request", Key: "POOL"}, "no -key"},
		{"local without key dir", Options{Method: "local"}, "key directory"},
		{"local bad key name", Options{Method: "local", KeyDir: "/k", KeyName: "../POOL"}, "not a plain file name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("New: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("New: %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

func TestBadRequest(t *testing.T) {
	f, err := New(Options{Command: []string{"/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Fetch(context.Background(), Request{Authz: []string{""}}, nil)
	if err == nil || !strings.Contains(err.Error(), "authz") {
		t.Errorf("Fetch: %v, want a refusal of the empty authz", err)
	}
}

func TestRedact(t *testing.T) {
	tok := string(testToken(t))
	for _, in := range []string{
		"error: " + tok + " refused",
		"header only " + tok[:strings.IndexByte(tok, '.')],
		"two parts " + tok[:strings.LastIndexByte(tok, '.')],
		"signature " + tok[strings.LastIndexByte(tok, '.')+1:],
	} {
		out := redact([]byte(in))
		if !strings.Contains(out, "[redacted]") {
			t.Errorf("redact(%.20q...) = %q, nothing redacted", in, out)
		}
		noSecret(t, errString(out), []byte(tok))
	}
	if out := redact([]byte(secmanFailure)); out != secmanFailure {
		t.Errorf("redact changed an HTCondor message: %q", out)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
