package agent

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"time"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// fetchOptions translates the config's [fetch] table.
func fetchOptions(cfg config.Config) fetch.Options {
	f := cfg.Fetch
	o := fetch.Options{
		Method:   f.Method,
		Command:  f.Command,
		Lifetime: f.Lifetime.Std(),
		Authz:    f.Authz,
		Timeout:  f.Timeout.Std(),
		Pool:     f.Pool,
		Name:     f.Name,
		Type:     f.Type,
		Key:      f.Key,
		KeyDir:   f.Local.KeyDir,
		KeyName:  f.Local.Key,
		Issuer:   f.Local.Issuer,
		Identity: f.Local.Identity,
	}
	if u, err := user.LookupId(fmt.Sprint(os.Getuid())); err == nil {
		o.User = u.Username
	}
	return o
}

// fetchInto fetches a token, checks it as a shown token would be checked,
// and stores it under name (replacing what was there only on success).
func (a *Agent) fetchInto(ctx context.Context, name string, req fetch.Request, progress func(fetch.Progress)) (*token.Token, error) {
	started := time.Now()
	buf, err := a.fetcher.Fetch(ctx, req, progress)
	if err != nil {
		return nil, err
	}
	defer buf.Wipe()
	t, err := token.Parse(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("the fetched token is malformed: %w", err)
	}
	// A token that is stale already would only break the tools.
	if r, by := a.checker.Check(ctx, buf.Bytes(), t); r != token.Valid {
		return nil, fmt.Errorf("the fetched token is not usable: %s (by the %s check): is the pool's signing key in sync?", r, by)
	}
	content, err := secmem.New(buf.Len() + 1)
	if err != nil {
		return nil, err
	}
	defer content.Wipe()
	secmem.Copy(content.Bytes(), buf.Bytes())
	content.Bytes()[buf.Len()] = '\n'
	if _, err := a.store.Put(name, content.Bytes(), a.checker.Quick); err != nil {
		return nil, fmt.Errorf("could not store the fetched token as %s: %w", name, err)
	}
	a.log.Info("token fetched", "name", name, "token", t, "took", time.Since(started).Round(time.Millisecond))
	return t, nil
}
