package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/mounttab"
)

// Closed says what Close did.
type Closed struct {
	NoAgent  bool          // no agent answered: there was nothing to close
	Sessions int           // login sessions left
	Wiped    bool          // that was the last: the tokens are zeroed and the directory unmounted
	Grace    time.Duration // when the last closed and Wiped is false: the wipe comes after this delay
	Dir      string        // the token directory
}

// Close uncounts a login session of the current user. At the last one the
// agent zeroes every token, unmounts and exits; Close returns once it has
// exited and the directory is no longer mounted (or with an error when the
// deadline passes first). With session.grace configured the wipe comes
// that much later, unless a login comes first.
func Close(ctx context.Context, o Options) (Closed, error) {
	ctx, cancel := o.deadline(ctx, DefaultCloseTimeout)
	defer cancel()
	cfg, p, err := o.load()
	if err != nil {
		return Closed{}, err
	}
	c := api.NewClient(p.Socket)
	st, err := c.Status(ctx)
	if errors.Is(err, api.ErrNoAgent) {
		return Closed{NoAgent: true}, nil
	}
	if err != nil {
		return Closed{}, fmt.Errorf("the agent on %s: %w", p.Socket, err)
	}
	// Watch the agent before asking, so its exit cannot be missed.
	pidfd, err := unix.PidfdOpen(st.PID, 0)
	if err != nil {
		pidfd = -1
	} else {
		defer unix.Close(pidfd)
	}
	resp, err := c.Session(ctx, api.SessionRequest{Action: ActionClose, PID: o.PID})
	if errors.Is(err, api.ErrNoAgent) {
		return Closed{NoAgent: true}, nil
	}
	if err != nil {
		return Closed{}, fmt.Errorf("could not uncount the session: %w", err)
	}
	res := Closed{Sessions: resp.Sessions, Wiped: resp.Wiped, Dir: st.Dir}
	if !resp.Wiped {
		if resp.Sessions == 0 {
			res.Grace = cfg.Session.Grace.Std()
		}
		return res, nil
	}
	if pidfd >= 0 {
		if err := waitPidfd(ctx, pidfd); err != nil {
			return res, fmt.Errorf("the agent (pid %d) did not finish wiping in time: %w; `kill %d` ends it (it wipes on SIGTERM)", st.PID, err, st.PID)
		}
	}
	// The agent unmounts before it exits; without a pidfd, poll the mount.
	for wait := pollMin; mounttab.Mounted(st.Dir); wait = min(2*wait, pollMax) {
		if pidfd >= 0 || pause(ctx, wait) != nil {
			return res, fmt.Errorf("the agent ended but %s is still mounted: fusermount3 -u -z %s", st.Dir, st.Dir)
		}
	}
	return res, nil
}
