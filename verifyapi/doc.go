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
//	                     -> 200 {"reason": "" | "rotated-key" | "unknown-key" | "expired" | "malformed", "generation": N,
//	                             "trust_domain": TD, "token_max_age": S, "cannot_tell": "other-issuer"}
//	                     or 503 key-unavailable: no verdict
//	GET  /v1/generation  -> 200 {"generation": N, "trust_domain": TD, "token_max_age": S}
//	GET  /v1/changes?after=N
//	                     -> long poll: 200 (as /v1/generation) as soon as N changed,
//	                        or after PollTimeout (30 s) with the current value
//	POST /v1/verify-batch {"tokens": ["<jwt>", ...]} (1 to 64 tokens, at most 128 KiB)
//	                     -> 200 {"generation": N, "trust_domain": TD, "token_max_age": S,
//	                             "verdicts": [{"reason": R, "cannot_tell": C, "unavailable": MSG}, ...]}
//	POST /v1/refetch-slot {"generation": N, "urgent": false, "missed": false} (at most 1 KiB)
//	                     -> 200 {"not_before": "2025-03-01T12:00:00.01Z"}
//	                     or 409 wrong-generation: N is not verifyd's current generation
//
// The protocol changes only by addition. The first release sent only
// "reason" and "generation"; trust_domain (omitted when verifyd knows none
// and judges every token), token_max_age (SEC_TOKEN_MAX_AGE in seconds,
// omitted when unset) and cannot_tell (omitted unless there is no verdict)
// came later. So a client of the first release reads a cannot_tell answer
// as reason "" and keeps the token, and a new client reads a first-release
// answer as "trust domain unknown, no max age". A path a verifyd does not
// know gets 404, which the client turns into an error matching
// [ErrUnsupported] and [ErrUnavailable]: cannot tell.
//
// /v1/refetch-slot came after the first release (agents of that release
// never ask; a client asking an older verifyd gets 404, [ErrUnsupported]:
// it spreads its refetch with its own random jitter instead). An agent
// asks it only when its own check, made with key generation N, found its
// session token unusable, with urgent true only while a tool waits for
// the fresh token; not_before is when it may start the fetch, RFC 3339 in
// UTC with up to nanosecond digits (slots can be 10 µs apart). verifyd
// keeps one schedule for the host at its refetch_rate, one slot per peer
// uid and generation (see package verifyd); unknown request fields are
// ignored. "missed" (added later) says the agent could not start at the
// slot it was given: more than a tick late, it gets a new one, once per
// generation; a verifyd that does not know it returns the same slot.
//
// /v1/verify-batch came after refetch slots: the verdicts of /v1/verify on
// several tokens, in order, under one generation, "unavailable" carrying
// what /v1/verify would send as 503 key-unavailable. An agent checks every
// token it holds at every key change, every agent of a host at once; one
// request each instead of one per token cut the CPU time of 100 agents at
// a key change (16 tokens each, two cores) from about 900 ms to 130-190 ms. A
// client that gets 404 asks one token at a time.
//
// Errors are non-2xx with {"code": "...", "message": "..."}: 400
// bad-request (not a JSON object with one non-empty token string or a
// generation, bad ?after), 404 not-found, 405 method-not-allowed (with
// Allow), 409 wrong-generation (a refetch slot for another key generation),
// 413 too-large, 429 rate-limited or too-many-connections (with
// Retry-After), 503 key-unavailable (verifyd cannot judge this token). A
// request that is not HTTP/1.1 as verifyd reads it (package
// internal/localapi) gets 400, 417, 431, 501 or 505 and its connection
// closed.
//
// A request carries a token: the client writes it from a buffer it zeroes
// once written, and verifyd reads it into buffers it zeroes before it
// answers; neither side lets net/http buffer it.
//
// The generation is 1 when verifyd starts and goes up by one whenever its
// set of signing keys changes; a restarted verifyd starts again at 1.
//
// # Clients
//
// Only a nil error carries a verdict: failures to reach verifyd wrap
// [ErrUnavailable], error answers are [*ServerError] (matching
// [ErrRateLimited] for 429, [ErrUnsupported] for 404, [ErrWrongGeneration]
// for 409, and [ErrUnavailable] for 404 and 5xx). An answer with
// cannot_tell is no verdict either.
package verifyapi
