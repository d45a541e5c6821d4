package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/tokend/tokend/agent/validate"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/keywatch"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// keyCheckers builds the configured key checks in order of preference:
// verifyd, a readable key directory, a probe command.
func keyCheckers(cfg config.Config, log *slog.Logger) ([]validate.KeyChecker, *verifydWatch) {
	v := cfg.Validate
	var keys []validate.KeyChecker
	var watch *verifydWatch
	if v.Verifyd != "" {
		c := verifyapi.NewClient(v.Verifyd)
		keys = append(keys, validate.Verifyd{Client: c})
		watch = &verifydWatch{client: c, log: log}
	}
	if v.KeyDir != "" {
		keys = append(keys, validate.Keys{Dir: token.KeyDir{Dir: v.KeyDir, PoolFile: v.PoolKey, WantUID: -1}})
	}
	if len(v.Probe) > 0 {
		keys = append(keys, &validate.Probe{Command: v.Probe, Every: v.Interval.Std()})
	}
	return keys, watch
}

// verifydWatch follows verifyd's change stream.
type verifydWatch struct {
	client *verifyapi.Client
	log    *slog.Logger

	mu  sync.Mutex // guards up and gen
	up  bool
	gen uint64
}

func (w *verifydWatch) state() (bool, uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.up, w.gen
}

// follow calls changed when verifyd's key generation changes, and when
// verifyd comes back after being away (tokens were checked without it).
// While verifyd is away it retries with a growing delay (up to 10 s).
func (w *verifydWatch) follow(ctx context.Context, changed func()) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		w.mu.Lock()
		after, wasUp := w.gen, w.up
		w.mu.Unlock()
		if !wasUp {
			after = 0 // answers at once with the current generation
		}
		gen, err := w.client.WaitChange(ctx, after)
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
		old := w.gen
		w.up, w.gen = true, gen
		w.mu.Unlock()
		switch {
		case !wasUp:
			w.log.Info("verifyd answers", "generation", gen)
			changed()
		case gen != old:
			w.log.Info("signing keys changed; re-checking every token", "generation", gen)
			changed()
		}
	}
}

// watchKeys calls changed when the key files the agent reads change
// (validate.key_dir), so a rotation is seen at once rather than at the next
// periodic check; a replaced key directory is followed too. Without
// inotify the periodic check is all there is.
func watchKeys(ctx context.Context, log *slog.Logger, dir, poolKey string, changed func()) {
	keywatch.New(keywatch.Options{Dir: dir, PoolKey: poolKey, Log: log}).Run(ctx, changed)
}
