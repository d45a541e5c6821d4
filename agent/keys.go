package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/tokend/tokend/agent/validate"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/keyset"
	"github.com/tokend/tokend/internal/keywatch"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// keyCheckers builds a pool's key checks in order of preference: verifyd,
// a readable key directory, a probe command.
func keyCheckers(v config.Validate, log *slog.Logger) ([]validate.KeyChecker, *verifydWatch, *validate.Keys) {
	var checks []validate.KeyChecker
	var watch *verifydWatch
	var keys *validate.Keys
	if v.Verifyd != "" {
		c := verifyapi.NewClient(v.Verifyd)
		check := &validate.Verifyd{Client: c}
		checks = append(checks, check)
		watch = &verifydWatch{client: c, check: check, log: log}
	}
	if v.KeyDir != "" {
		keys = &validate.Keys{Dir: token.KeyDir{Dir: v.KeyDir, PoolFile: v.PoolKey, WantUID: -1}}
		checks = append(checks, keys)
	}
	if len(v.Probe) > 0 {
		checks = append(checks, &validate.Probe{Command: v.Probe, Every: v.Interval.Std()})
	}
	return checks, watch, keys
}

// verifydState is what verifyd last said.
type verifydState struct {
	Generation  uint64
	TrustDomain string        // "" = it knows none
	TokenMaxAge time.Duration // 0 = none
}

// verifydWatch follows verifyd's change stream.
type verifydWatch struct {
	client *verifyapi.Client
	check  *validate.Verifyd
	log    *slog.Logger

	mu sync.Mutex // guards up and st
	up bool
	st verifydState
}

func (w *verifydWatch) state() (bool, verifydState) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.up, w.st
}

// verifydEvent says why follow calls back.
type verifydEvent int

const (
	verifydFirst   verifydEvent = iota // it answered for the first time
	verifydBack                        // it answers again after being away
	verifydRotated                     // its key generation changed
	verifydNews                        // its trust domain or max age changed
)

// follow calls changed with what verifyd says when it first answers, when
// it comes back after being away (tokens were checked without it), when
// its key generation changes, and when its trust domain or max age does.
// While verifyd is away it retries with a growing delay (up to 10 s).
func (w *verifydWatch) follow(ctx context.Context, changed func(st verifydState, ev verifydEvent)) {
	seen := false
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		w.mu.Lock()
		after, wasUp := w.st.Generation, w.up
		w.mu.Unlock()
		if !wasUp {
			after = 0 // answers at once with the current generation
		}
		st, err := waitState(ctx, w.client, after)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if wasUp {
				w.log.Warn("verifyd went away; checking keys with what else is configured", "err", err)
			}
			w.mu.Lock()
			w.up = false
			w.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, 10*time.Second)
			continue
		}
		delay = 100 * time.Millisecond
		w.mu.Lock()
		old := w.st
		w.up, w.st = true, st
		w.mu.Unlock()
		switch {
		case !wasUp:
			w.log.Info("verifyd answers", "generation", st.Generation, "trust_domain", st.TrustDomain)
			ev := verifydBack
			if !seen {
				ev, seen = verifydFirst, true
			}
			changed(st, ev)
		case st.Generation != old.Generation:
			w.log.Info("signing keys changed; re-checking every token", "generation", st.Generation)
			changed(st, verifydRotated)
		case st != old:
			changed(st, verifydNews)
		}
	}
}

// waitState makes one long poll of verifyd's state.
func waitState(ctx context.Context, c *verifyapi.Client, after uint64) (verifydState, error) {
	r, err := c.WaitState(ctx, after)
	return verifydState{
		Generation:  r.Generation,
		TrustDomain: r.TrustDomain,
		TokenMaxAge: time.Duration(max(r.TokenMaxAge, 0)) * time.Second,
	}, err
}

// watchKeys follows a pool's key directory (validate.key_dir): at each
// event it reads the key files again, and once two reads keywatch.Confirm
// apart agree on something other than the snapshot held, it takes it and
// calls changed. So a rotation is seen at once rather than at the next
// periodic check, and a key file missing or half written for a moment
// costs nothing. A replaced key directory is followed too; without inotify
// the periodic resync is all there is.
func watchKeys(ctx context.Context, log *slog.Logger, v config.Validate, keys *validate.Keys, changed func()) {
	w := keywatch.New(keywatch.Options{Dir: v.KeyDir, PoolKey: v.PoolKey, Log: log, Resync: v.Interval.Std(), Fallback: v.Interval.Std()})
	keywatch.Settled(ctx, w, keys.Read, keyset.Same,
		func(s *keyset.Set) {
			problems := s.Problems()
			if !keys.Apply(s) {
				return
			}
			for _, p := range problems {
				log.Warn("a key file cannot be used; tokens of its kid are not judged", "kid", p.Kid, "problem", p.Msg)
			}
			log.Info("signing keys changed; re-checking every token", "key_dir", v.KeyDir, "generation", keys.Generation())
			changed()
		},
		(*keyset.Set).Wipe)
}
