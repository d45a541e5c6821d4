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

// fetchOptions translates a pool's [fetch] table.
func fetchOptions(f config.Fetch) fetch.Options {
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

// fetchInto fetches a token of pool p, checks it as a shown token would be
// checked, and stores it under name (replacing what was there only on
// success). A token whose iss is not the pool's is refused and reported
// (the pool's last error), never stored.
func (a *Agent) fetchInto(ctx context.Context, p *pool, name string, req fetch.Request, progress func(fetch.Progress)) (*token.Token, error) {
	started := time.Now()
	buf, err := p.fetcher.Fetch(ctx, req, progress)
	if err != nil {
		return nil, err
	}
	defer buf.Wipe()
	t, err := token.Parse(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("the fetched token is malformed: %w", err)
	}
	if err := a.checkIssuer(p, t); err != nil {
		a.mu.Lock()
		p.refused = err.Error()
		a.mu.Unlock()
		a.log.Error("refused a fetched token of another pool", "pool", p.cfg.Name, "name", name, "token", t)
		return nil, err
	}
	// A token that breaks the tools already would only be hidden.
	v := p.checker.Check(ctx, buf.Bytes(), t)
	if v.Reason.Hides() {
		return nil, fmt.Errorf("the fetched token is not usable: %s (by the %s check): is the pool's signing key in sync?", v.Reason, v.By)
	}
	content, err := secmem.New(buf.Len() + 1)
	if err != nil {
		return nil, err
	}
	defer content.Wipe()
	secmem.Copy(content.Bytes(), buf.Bytes())
	content.Bytes()[buf.Len()] = '\n'
	a.mu.Lock()
	p.refused = ""
	if v.Reason == token.UnknownKey && name == p.cfg.SessionToken {
		// Fetched again already in this key generation: the next
		// refetch waits for a key change.
		p.inbox.unknownKeyAt = max(p.inbox.unknownKeyAt, p.epoch.Load()+1)
	}
	a.mu.Unlock()
	if _, err := a.store.Put(name, content.Bytes(), a.router.Quick); err != nil {
		return nil, fmt.Errorf("could not store the fetched token as %s: %w", name, err)
	}
	a.log.Info("token fetched", "pool", p.cfg.Name, "name", name, "token", t, "took", time.Since(started).Round(time.Millisecond))
	return t, nil
}

// shownFiles is what a fetch command from a remote schedd gets as its own
// token directory: a copy of every file the mount shows, as it would have
// read them there (the tool picks the token of the schedd's trust domain).
// The fetch wipes the copies.
func (a *Agent) shownFiles() []fetch.TokenFile {
	var out []fetch.TokenFile
	for _, e := range a.store.List() {
		if b, err := a.store.Content(e.Attr.Ino); err == nil {
			out = append(out, fetch.TokenFile{Name: e.Name, Content: b})
		}
	}
	return out
}
