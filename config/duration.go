package config

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Duration is a time.Duration written in TOML as a string with a unit, such as
// "60s", "5m", "1h30m" or "0s". Negative durations are rejected when decoding.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d the way it is written in a config file, without the
// redundant trailing zero units time.Duration.String adds ("5m", not "5m0s").
func (d Duration) String() string {
	s := time.Duration(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

// Prefixes of the messages UnmarshalText returns; Load recognises them to
// name the offending key first.
const (
	errInvalidDuration  = "invalid duration"
	errNegativeDuration = "negative duration"
)

// UnmarshalText implements encoding.TextUnmarshaler. It accepts what
// time.ParseDuration accepts, except negative values.
func (d *Duration) UnmarshalText(text []byte) error {
	s := string(text)
	const want = `want a number with a unit, like "30s", "5m" or "1h30m"`
	if len(s) > 64 {
		return errors.New(errInvalidDuration + ": value too long; " + want)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%s %q: %s", errInvalidDuration, s, want)
	}
	if v < 0 {
		return fmt.Errorf("%s %q is not allowed: want zero or more", errNegativeDuration, s)
	}
	*d = Duration(v)
	return nil
}
