// Package verifyd is the key-verification service: it holds the pool's derived signing keys, watches the key files, and tells agents whether a token's signature is good with the current key.
//
// Users' agents cannot read the pool's signing keys (root-owned, mode 0600).
// verifyd, `tokend verifyd`, runs as root (or as the user owning the keys),
// reads SEC_PASSWORD_DIRECTORY and the POOL key file, derives the HMAC keys
// as HTCondor does ([token.DeriveKey]) and answers over a Unix socket,
// config.DefaultVerifyd, that any local user may connect to. Its command
// line, `tokend verifyd`, is in cmd/tokend.
//
// The wire protocol and the client agents use are in package verifyapi;
// this package is the server.
//
// # Verdicts
//
// The checks run in this order, and the first failure is the reason:
// structure (malformed), issuer (see below), kid (unknown-key: no key file
// of that name), signature (rotated-key: the key of that name changed, or
// the token was altered), then time with no margin (expired: past exp, or
// past iat + SEC_TOKEN_MAX_AGE; HTCondor servers allow no leeway). The
// signature comes before the time so that claims are trusted only when
// they are authentic; HTCondor's vectors accept either reason when both
// fail. nbf, validate.trust_domains and revocation are the agent's
// business. Signatures are compared with hmac.Equal (constant time), and
// key sets with subtle.ConstantTimeCompare.
//
// # Trust domain and max age
//
// verifyd speaks for one trust domain: Options.TrustDomain (`tokend
// verifyd --trust-domain`, or trust_domain in verifyd.toml), else HTCondor's
// TRUST_DOMAIN up to its first comma or space (condor_config_val), as
// HTCondor cuts it for the iss of the tokens it signs. The pool's keys say
// nothing about a token of another iss (a flocking pool's, a national
// pool's): verifyd answers it with no verdict, 200 {"reason": "",
// "cannot_tell": "other-issuer"}, whatever its kid and signature. With no
// trust domain known at all it judges every token, as the first release
// did, and says so once in its log at start.
//
// SEC_TOKEN_MAX_AGE (condor_config_val, read at start) makes HTCondor's
// servers refuse a token whose iat is older; verifyd answers expired for
// it, once its signature is good. Every answer reports the trust domain and
// max age (trust_domain, token_max_age in seconds; absent when unknown), so
// agents learn them; the protocol only ever grows by such additions
// (package verifyapi).
//
// A verifyd that cannot read a key cannot judge the tokens of its kid, and
// says so with 503 key-unavailable instead of a verdict (the client's error
// matches verifyapi.ErrUnavailable; agents keep the token) when: the key
// file of the token's kid exists but is refused (wrong owner or mode, not a
// regular file, empty, e.g. while it is being rewritten in place,
// unreadable); the
// kid is POOL and the pool key file is missing or refused (the collector
// recreates a missing POOL, and a verifyd looking in the wrong place must
// not condemn every token); the password directory exists but
// cannot be listed (for kids other than POOL); or verifyd holds no key at
// all (then for every request, even a malformed token). The message names
// the kid and the problem, never key bytes. A named kid with no key file at
// all is unknown-key (HTCondor's tools skip such tokens too).
//
// # Keys and generations
//
// Every regular file in the password directory is a key named by its file
// name; the pool key file is the key POOL (a file named POOL in the password
// directory is ignored when the pool key file is elsewhere, as in HTCondor).
// Derived keys live only in locked memory (package keyset, secmem) and are
// zeroed when replaced or removed and when Serve returns; raw file bytes are
// zeroed right after deriving. Files are read at start and again after file
// events, never per request.
//
// The generation is 1 after New and goes up by one whenever the set of
// derived keys changes: a key added, removed, or replaced with different
// bytes. Touching a key, rewriting the same bytes or a chmod that keeps it
// usable does not move it. A chmod that makes a key unusable (group or
// other bits), or a chown to another user, removes the key, as HTCondor
// would refuse it, and that is a change; so is the key coming back.
//
// While Serve runs, package keywatch watches the password directory, its
// parent (the directory removed and recreated, or renamed over) and the
// pool key's directory. A reading counts only once it has settled
// (keywatch.Settled): 2 ms after an event everything is read, and read
// again every 20 ms until two readings in a row agree, keys and problems
// alike; only then is it compared with the current set (long polls answer
// at once when it differs). So a key file that is missing or half written
// for a moment (a copy, a truncate-then-write) costs no token and moves
// nothing, while a real change counts about 22 ms after the last write. A
// pool key removed for longer than that is a change (POOL tokens get 503
// until it is back, then the same verdicts as before): the generation moves
// out and back. A periodic reload every minute, settled too, covers what
// inotify cannot see.
//
// # Refetch slots
//
// After a key change every agent whose session token became unusable
// fetches a fresh one from the schedd. So that a host's agents do not all
// reach it at once, an agent whose own check found its token unusable asks
// POST /v1/refetch-slot ({generation, urgent} -> {not_before}) and starts
// its fetch at not_before. verifyd keeps one schedule for the host
// ([Schedule]) at refetch_rate (Options.RefetchRate, default 100 per
// second): slots are at least 1/rate apart, so no window of k/rate holds
// more than k; a lone agent goes at once; every fifth slot is kept for
// urgent requests (a tool is waiting for the token), which therefore go
// within five slots, and ordinary ones run at four fifths of the rate
// behind them (N agents within N/(0.8·rate)). One slot per peer uid and
// generation: asking again returns it (moved earlier when an urgent
// request follows an ordinary one). The first request for a new
// generation cancels the slots of the old one still to come. A request
// for another generation than verifyd's current one (older: a later change
// happened; newer: verifyd restarted and counts from 1 again) gets 409
// wrong-generation: the agent checks its token again with the current
// generation and asks again. Without verifyd, or with an older one (404),
// agents spread their fetches with random jitter.
//
// # Abuse
//
// Each connection's peer uid is read once with SO_PEERCRED (package
// internal/localapi, which the agent's control API shares). Every request,
// refetch slots included, costs one token of the uid's bucket (Options.Rate per second, Burst at
// once); connections are limited per uid (64) and overall (4096). Header,
// read, write and idle timeouts close slow or silent connections. The log
// names kid, iss, sub, verdict and peer uid, never token or key bytes.
package verifyd
