package fetch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// localFetcher signs tokens itself with a key file, as condor_token_create
// does.
type localFetcher struct {
	o        Options
	path     string // the key file
	identity string // sub
}

func newLocal(o Options) (Fetcher, error) {
	if o.KeyDir == "" {
		return nil, errors.New("fetch: the local issuer needs a key directory (fetch.local.key_dir) holding the signing key file")
	}
	if o.KeyName == "" {
		o.KeyName = token.PoolKeyName
	}
	if o.KeyName == "." || o.KeyName == ".." || strings.ContainsAny(o.KeyName, "/\x00") {
		return nil, fmt.Errorf("fetch: key name %q is not a plain file name", o.KeyName)
	}
	if o.Issuer == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return nil, fmt.Errorf("fetch: no issuer set and cannot read the host name: %v", err)
		}
		o.Issuer = h
	}
	id := o.Identity
	if id == "" {
		var err error
		if id, err = defaultIdentity(o); err != nil {
			return nil, err
		}
	}
	o.Command = nil
	return &localFetcher{o: o, path: filepath.Join(o.KeyDir, o.KeyName), identity: id}, nil
}

func (f *localFetcher) Fetch(ctx context.Context, req Request, _ func(Progress)) (*secmem.Buffer, error) {
	if err := ctx.Err(); err != nil {
		return nil, f.o.fail(context.Cause(ctx))
	}
	lifetime, authz, err := f.o.resolve(req)
	if err != nil {
		return nil, f.o.fail(err)
	}
	// Read the file each time, as HTCondor does: a rotation is seen at once.
	key, err := token.LoadKey(f.path, f.o.KeyName, os.Getuid())
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("%w: copy the pool's signing key there (owned by you, mode 0600) or, for a pool of your own, make a new one with: (umask 077; head -c 64 /dev/urandom > %s)", err, f.path)
	}
	if err != nil {
		return nil, f.o.fail(err)
	}
	defer key.Wipe()
	raw, err := token.Sign(token.Claims{
		Issuer:   f.o.Issuer,
		Subject:  f.identity,
		Authz:    authz,
		Lifetime: lifetime,
	}, f.o.KeyName, key.Bytes())
	if err != nil {
		return nil, f.o.fail(err)
	}
	defer clear(raw)
	if _, err := token.Parse(raw); err != nil {
		return nil, f.o.fail(fmt.Errorf("signed a token that does not parse: %w", err))
	}
	tok, err := store(raw)
	if err != nil {
		return nil, f.o.fail(err)
	}
	return tok, nil
}
