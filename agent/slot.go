package agent

import (
	"context"
	"errors"
	"time"

	"github.com/tokend/tokend/verifyapi"
)

// slotter grants refetch slots (verifyapi.Client): verifyd paces the
// refetches of every agent of the host after a key change.
type slotter interface {
	RefetchSlot(ctx context.Context, req verifyapi.RefetchSlotRequest) (time.Time, error)
}

// slotAskTimeout bounds the wait for verifyd's answer; past it the refetch
// is spread by the jitter instead.
const slotAskTimeout = time.Second

// slotsUp reports whether p's verifyd grants refetch slots: it answers,
// and did not say it cannot.
func (p *pool) slotsUp() bool {
	if p.slots == nil || p.noSlots.Load() {
		return false
	}
	up, _ := p.verifyd.state()
	return up
}

// askSlot asks p's verifyd for a refetch slot in its current generation
// and hands the answer to p's policy.
func (a *Agent) askSlot(ctx context.Context, p *pool, ask slotAsk) {
	_, st := p.verifyd.state()
	c, cancel := context.WithTimeout(ctx, slotAskTimeout)
	at, err := p.slots.RefetchSlot(c, verifyapi.RefetchSlotRequest{Generation: st.Generation, Urgent: ask.Urgent, Missed: ask.Missed})
	cancel()
	switch {
	case err == nil:
		a.log.Info("verifyd granted a refetch slot", "pool", p.cfg.Name, "generation", st.Generation, "urgent", ask.Urgent, "missed", ask.Missed,
			"in", max(time.Until(at), 0).Round(time.Millisecond))
	case ctx.Err() != nil:
		return
	case errors.Is(err, verifyapi.ErrUnsupported):
		if !p.noSlots.Swap(true) {
			a.log.Info("verifyd grants no refetch slots (an older release): refetches after a key change are spread by a random delay", "pool", p.cfg.Name)
		}
	case errors.Is(err, verifyapi.ErrWrongGeneration):
		// Its key generation moved on: asked again once the agent sees it.
		a.log.Info("verifyd's key generation moved on before it granted a refetch slot", "pool", p.cfg.Name, "generation", st.Generation)
	default:
		a.log.Warn("could not get a refetch slot from verifyd: the refetch is spread by a random delay", "pool", p.cfg.Name, "err", err)
	}
	a.deliver(p, func(ib *inbox) { ib.slots = append(ib.slots, slotAnswer{ask, at, err}) })
}
