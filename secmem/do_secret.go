//go:build goexperiment.runtimesecret

package secmem

import "runtime/secret"

func do(f func()) { secret.Do(f) }

// RuntimeSecret reports whether Do is runtime/secret.Do (a build with
// GOEXPERIMENT=runtimesecret).
const RuntimeSecret = true
