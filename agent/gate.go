package agent

import (
	"context"
	"sync"
	"time"

	"github.com/tokend/tokend/fusefs"
)

// gater closes gates on the mount (fusefs.FS): after a key change made a
// pool's session token unusable, the first looks at it wait for the fresh
// one (DESIGN.md, "A key rotation without a failed command").
type gater interface {
	CloseGate(names []string, wait time.Duration) gate
	OpenGates()
}

// gate is one closed gate (fusefs.Gate).
type gate interface {
	Open()
	Waiting() <-chan struct{} // closed at the first arrival: a tool is waiting
}

// fsGates is the mount's gates.
type fsGates struct{ fs *fusefs.FS }

func (g fsGates) CloseGate(names []string, wait time.Duration) gate {
	return g.fs.CloseGate(names, wait)
}
func (g fsGates) OpenGates() { g.fs.OpenGates() }

// closeGate closes a gate on p's session token, opening the one before, and
// watches for a tool waiting at it: that makes the refetch urgent. Called
// after the pass that hid the token: its invalidations are queued before.
func (a *Agent) closeGate(ctx context.Context, running *sync.WaitGroup, p *pool) {
	if a.gates == nil {
		return
	}
	a.openGate(p)
	g := a.gates.CloseGate([]string{p.cfg.SessionToken}, p.cfg.Fetch.Wait.Std())
	stop := make(chan struct{})
	a.mu.Lock()
	p.gate, p.gateStop = g, stop
	a.mu.Unlock()
	running.Go(func() {
		select {
		case <-g.Waiting():
			a.log.Info("a tool waits for the fresh session token", "pool", p.cfg.Name, "name", p.cfg.SessionToken)
			a.deliver(p, func(ib *inbox) { ib.waitingAt = g })
		case <-stop:
		case <-ctx.Done():
		}
	})
}

// openGate opens p's gate, if closed.
func (a *Agent) openGate(p *pool) {
	a.mu.Lock()
	g, stop := p.gate, p.gateStop
	p.gate, p.gateStop = nil, nil
	a.mu.Unlock()
	if g != nil {
		g.Open()
		close(stop)
	}
}

// openGates opens every pool's gate: the agent ends.
func (a *Agent) openGates() {
	for _, p := range a.pools {
		a.openGate(p)
	}
}
