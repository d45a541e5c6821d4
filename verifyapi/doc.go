// Package verifyapi holds the wire types of verifyd's key-verification API
// and its typed client, [Client], which agents and `tokend doctor` use.
// verifyd (package verifyd) serves it.
//
// # Wire
//
// HTTP/1.1 with JSON bodies over verifyd's Unix socket
// (config.DefaultVerifyd), versioned paths:
//
//	POST /v1/verify      {"token": "<jwt>"} (at most 16 KiB)
//	                     -> 200 {"reason": "" | "rotated-key" | "unknown-key" | "expired" | "malformed", "generation": N}
//	                     or 503 key-unavailable: no verdict
//	GET  /v1/generation  -> 200 {"generation": N}
//	GET  /v1/changes?after=N
//	                     -> long poll: 200 {"generation": M} as soon as M != N,
//	                        or after PollTimeout (30 s) with the current value
//
// Errors are non-2xx with {"code": "...", "message": "..."}: 400
// bad-request (not a JSON object with a token string, bad ?after), 404
// not-found, 405 method-not-allowed (with Allow), 413 too-large, 429
// rate-limited or too-many-connections (with Retry-After), 503
// key-unavailable (verifyd cannot judge this token).
//
// The generation is 1 when verifyd starts and goes up by one whenever its
// set of signing keys changes; a restarted verifyd starts again at 1.
//
// # Clients
//
// Only a nil error carries a verdict: failures to reach verifyd wrap
// [ErrUnavailable], error answers are [*ServerError] (matching
// [ErrRateLimited] for 429 and [ErrUnavailable] for 5xx).
package verifyapi
