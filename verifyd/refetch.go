package verifyd

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/tokend/tokend/internal/localapi"
	"github.com/tokend/tokend/verifyapi"
)

// maxSlotRequestBytes bounds a POST /v1/refetch-slot body: two small
// fields, and room for fields of later releases.
const maxSlotRequestBytes = 1 << 10

// handleRefetchSlot answers POST /v1/refetch-slot with the peer uid's slot
// of the host's schedule ([Schedule]) for the current key generation.
func (s *Server) handleRefetchSlot(w http.ResponseWriter, r *http.Request) {
	uid := unknownUID
	if p, ok := localapi.PeerOf(r.Context()); ok {
		uid = p.UID
	}
	body, e := localapi.ReadBody(w, r, maxSlotRequestBytes)
	if e != nil {
		localapi.WriteError(w, e.Status, e.Code, e.Message)
		return
	}
	// Unknown fields are ignored (later releases may add some); the
	// generation is required.
	var req struct {
		Generation *uint64 `json:"generation"`
		Urgent     *bool   `json:"urgent"`
		Missed     *bool   `json:"missed"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Generation == nil || *req.Generation == 0 {
		localapi.WriteError(w, http.StatusBadRequest, verifyapi.CodeBadRequest,
			`want a JSON object {"generation": N, "urgent": false}, N the key generation of the check that found the session token unusable (1 or more)`)
		return
	}
	gen, urgent, missed := *req.Generation, req.Urgent != nil && *req.Urgent, req.Missed != nil && *req.Missed
	cur := s.Generation()
	var at time.Time
	err := ErrStaleGeneration
	if gen == cur {
		grant := s.slots.Grant
		if missed {
			grant = s.slots.Missed
		}
		s.slotMu.Lock()
		at, err = grant(uid, gen, urgent, time.Now())
		s.slotMu.Unlock()
	}
	if err != nil { // a generation verifyd does not have yet, or any more
		cur = s.Generation()
		localapi.WriteError(w, http.StatusConflict, verifyapi.CodeWrongGeneration,
			fmt.Sprintf("refetch slot asked for key generation %d, but verifyd's is %d: check the session token again with generation %d and ask with it", gen, cur, cur))
		return
	}
	s.log.Debug("refetch slot", "peer_uid", uid, "generation", gen, "urgent", urgent, "missed", missed, "wait", time.Until(at).Round(time.Millisecond))
	localapi.WriteJSON(w, http.StatusOK, verifyapi.RefetchSlotResponse{NotBefore: at.UTC()})
}
