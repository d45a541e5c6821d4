// Package api holds the wire types of the agent's control API (HTTP/JSON
// over the agent's Unix socket) and its typed client. The agent serves it;
// the CLI is a client of it.
//
// Paths are versioned (/v1/...). Errors travel as {code, message} with a
// matching HTTP status and come back to the caller as *Error.
package api

import "time"

// Paths of the v1 API.
const (
	PathStatus  = "/v1/status"
	PathTokens  = "/v1/tokens"  // GET ?all=1; DELETE /v1/tokens/{name}
	PathFetch   = "/v1/fetch"   // POST FetchRequest; streams FetchEvent lines
	PathWipe    = "/v1/wipe"    // POST WipeRequest
	PathSession = "/v1/session" // POST SessionRequest
)

// MaxRequestBody bounds every request body the agent reads.
const MaxRequestBody = 16 << 10

// Token is one token's metadata: the shape of `tokend list --json`.
// It never carries the token itself.
type Token struct {
	Name   string `json:"name"`
	Pool   string `json:"pool"` // the pool its iss belongs to; "" = no configured pool
	Sub    string `json:"sub"`
	Iss    string `json:"iss"`
	Kid    string `json:"kid"`
	Iat    int64  `json:"iat"`
	Exp    *int64 `json:"exp"` // null: no expiry
	Scope  string `json:"scope"`
	State  string `json:"state"`  // "valid" (shown) | "hidden"
	Reason string `json:"reason"` // "" | unknown-key (both shown) | expired | rotated-key | not-yet-valid | revoked | malformed | untrusted-issuer
	// Remembered: hidden, its bytes kept in locked memory, and it comes
	// back (same name, same bytes) when it verifies again.
	Remembered bool `json:"remembered,omitempty"`
}

// Token states. StateValid means "shown": a shown token's Reason is "" or
// ReasonUnknownKey (no key of its kid here; the tools skip it where the key
// is unknown and may use it where it is known).
const (
	StateValid  = "valid"
	StateHidden = "hidden"
)

// ReasonUnknownKey is the one Reason of a shown token.
const ReasonUnknownKey = "unknown-key"

// Status is the shape of `tokend status --json`.
type Status struct {
	Version      string     `json:"version"`
	PID          int        `json:"pid"`
	Dir          string     `json:"dir"`
	Mounted      bool       `json:"mounted"`
	Socket       string     `json:"socket"`
	Started      time.Time  `json:"started"`
	Tokens       int        `json:"tokens"` // shown
	Hidden       int        `json:"hidden"`
	Session      Session    `json:"session"`
	Validation   Validation `json:"validation"`
	Sessions     int        `json:"sessions"` // open login sessions (PAM); 0 when not counted
	MemoryLocked bool       `json:"memory_locked"`
	OpenMode     string     `json:"open_mode"` // kernel-no-open | open-handles; "" when not mounted

	// Session and Validation above are the default pool's, kept for
	// scripts; Pools has every pool, the default first. An agent of an
	// earlier release sends no pools (nil).
	Pools             []PoolStatus `json:"pools"`
	Remembered        int          `json:"remembered"`          // hidden tokens kept in locked memory
	MemoryLockedBytes int64        `json:"memory_locked_bytes"` // locked memory in use
	MemoryLockLimit   int64        `json:"memory_lock_limit"`   // RLIMIT_MEMLOCK; 0 = unknown
}

// PoolStatus is one pool: `tokend status` shows each.
type PoolStatus struct {
	Name        string `json:"name"`              // "default" for the top-level pool
	TrustDomain string `json:"trust_domain"`      // "" = unknown
	TrustFrom   string `json:"trust_domain_from"` // TrustFromConfig | TrustFromVerifyd | TrustFromCondor | "" (unknown)
	// ClaimsOther: the trust domain is unknown, so this pool judges every
	// token whose iss no other pool claims.
	ClaimsOther bool       `json:"claims_other_issuers"`
	TokenMaxAge int64      `json:"token_max_age,omitempty"` // seconds: SEC_TOKEN_MAX_AGE as verifyd reports it; 0 = none
	Session     Session    `json:"session"`
	Validation  Validation `json:"validation"`
	LastError   string     `json:"last_error,omitempty"` // a refused fetched token, a trust-domain mismatch
}

// Where a pool's trust domain came from (PoolStatus.TrustFrom).
const (
	TrustFromConfig  = "config"            // trust_domain or pools.NAME.trust_domain
	TrustFromVerifyd = "verifyd"           // reported by the pool's verifyd
	TrustFromCondor  = "condor_config_val" // HTCondor's TRUST_DOMAIN
	TrustFromUnknown = ""
)

// Open modes: how files and the directory are opened on the mount.
const (
	// OpenModeKernel: the kernel opens them itself (no_open, no_opendir), so
	// the tools' reads cost no round trip to the agent.
	OpenModeKernel = "kernel-no-open"
	// OpenModeHandles: the kernel lacks no_open or no_opendir support (EL 8's
	// 4.18 without the backport), so the agent answers every open.
	OpenModeHandles = "open-handles"
)

// Session describes the session token and its fetcher.
type Session struct {
	Name        string     `json:"name"`
	Method      string     `json:"method"` // exec | request | local
	State       string     `json:"state"`  // valid | missing | fetching | waiting-approval | failed | removed
	Exp         *int64     `json:"exp,omitempty"`
	NextRefresh *time.Time `json:"next_refresh,omitempty"`
	LastFetch   *time.Time `json:"last_fetch,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	Failures    int        `json:"failures"` // consecutive
	RequestID   string     `json:"request_id,omitempty"`
}

// Session states.
const (
	SessionValid    = "valid"
	SessionMissing  = "missing"
	SessionFetching = "fetching"
	SessionWaiting  = "waiting-approval"
	SessionFailed   = "failed"
	SessionRemoved  = "removed" // the user removed it (tokend rm, rm, tokend wipe): not fetched again until asked
)

// Validation says how tokens are checked.
type Validation struct {
	KeyCheck   string     `json:"key_check"` // verifyd | keys | probe | none
	Verifyd    string     `json:"verifyd"`   // socket; "" when not configured
	VerifydUp  bool       `json:"verifyd_up"`
	Generation uint64     `json:"generation,omitempty"`
	LastCheck  *time.Time `json:"last_check,omitempty"`
}

// FetchRequest asks for a token now.
type FetchRequest struct {
	Pool     string   `json:"pool,omitempty"`     // "" = the default pool
	Name     string   `json:"name,omitempty"`     // default: the pool's session token's name
	Lifetime string   `json:"lifetime,omitempty"` // Go duration; "" = configured
	Authz    []string `json:"authz,omitempty"`
}

// FetchEvent is one line of a fetch's response stream: progress while it
// waits, then exactly one of Token or Error.
type FetchEvent struct {
	Progress *Progress `json:"progress,omitempty"`
	Token    *Token    `json:"token,omitempty"`
	Error    *Error    `json:"error,omitempty"`
}

// Progress of a long fetch.
type Progress struct {
	Started   time.Time `json:"started"`
	RequestID string    `json:"request_id,omitempty"`
	Message   string    `json:"message"`
}

// WipeRequest removes every token; with Logout the agent also exits.
type WipeRequest struct {
	Logout bool `json:"logout"`
}

// SessionRequest counts a login session in or out.
type SessionRequest struct {
	Action string `json:"action"` // open | close
	PID    int    `json:"pid"`    // a process of the session; it is watched
}

// SessionResponse is the count after the request.
type SessionResponse struct {
	Sessions int  `json:"sessions"`
	Wiped    bool `json:"wiped"` // the last session closed
}
