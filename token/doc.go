// Package token handles one HTCondor IDTOKEN: it parses the JWT and its
// claims, reads token files and drafts the way HTCondor tools read them,
// derives HMAC keys from HTCondor key files, checks signatures and signs new
// tokens that match what condor_token_create produces.
//
// A raw token is a bearer secret. Nothing in this package puts a raw token,
// or any part of its signature, into an error, a log value or fmt output;
// [Token] holds only the decoded, non-secret header and claims. Key material
// never appears in errors either.
//
// Keys, HMAC pads and computed signatures live in locked memory
// ([secmem.Buffer]) and are wiped at their last use; signatures are
// computed and checked here, not by a JWT library, so that no library
// keeps a key, a pad-derived state or a signature where it cannot be
// cleared (see hmac.go).
//
// It imports nothing else from tokend but secmem.
package token
