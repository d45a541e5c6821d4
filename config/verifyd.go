package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
)

// verifyd's configuration: a file of its own, since verifyd runs as root
// and reads nothing of the users'. It goes through the same loader as the
// agent's, with the same strict keys and suggestions.

// VerifydFile is verifyd's configuration file, read when --config is not
// given and it exists. Tests may redirect it.
var VerifydFile = "/etc/tokend/verifyd.toml"

// verifyd's defaults.
const (
	// DefaultPasswordDir is HTCondor's SEC_PASSWORD_DIRECTORY when
	// condor_config_val does not say otherwise.
	DefaultPasswordDir = "/etc/condor/passwords.d"
	// DefaultVerifydRate and DefaultVerifydBurst bound each peer uid's
	// requests: Burst at once, then Rate per second.
	DefaultVerifydRate  = 50.0
	DefaultVerifydBurst = 100
	// DefaultRefetchRate is how many refetch slots per second verifyd
	// hands out host-wide after a key change (refetch_rate), between
	// MinRefetchRate and MaxRefetchRate.
	DefaultRefetchRate = 100.0
	MinRefetchRate     = 1.0
	MaxRefetchRate     = 100000.0
)

// Verifyd is verifyd's configuration.
type Verifyd struct {
	Socket      string  `toml:"socket"`       // where to listen unless socket-activated
	PasswordDir string  `toml:"password_dir"` // "" = SEC_PASSWORD_DIRECTORY from condor_config_val, else DefaultPasswordDir
	PoolKey     string  `toml:"pool_key"`     // "" = SEC_TOKEN_POOL_SIGNING_KEY_FILE (when password_dir is ""), else <password_dir>/POOL
	TrustDomain string  `toml:"trust_domain"` // the iss verifyd speaks for; "" = HTCondor's TRUST_DOMAIN, else every iss
	KeyOwner    int     `toml:"key_owner"`    // uid that must own key files; 0 = verifyd's own, -1 = no check
	Rate        float64 `toml:"rate"`         // requests per second per peer uid, after Burst
	Burst       int     `toml:"burst"`        // requests at once per peer uid
	RefetchRate float64 `toml:"refetch_rate"` // refetch slots per second, host-wide, after a key change
	LogLevel    string  `toml:"log_level"`    // debug | info | warn | error
}

// DefaultVerifydConfig returns verifyd's built-in configuration.
func DefaultVerifydConfig() Verifyd {
	return Verifyd{
		Socket:      DefaultVerifyd,
		Rate:        DefaultVerifydRate,
		Burst:       DefaultVerifydBurst,
		RefetchRate: DefaultRefetchRate,
		LogLevel:    "info",
	}
}

// LoadVerifyd reads verifyd's configuration over the defaults: path, which
// must exist, or VerifydFile when path is "" and that file exists. Errors
// are those of Load: a parse error names the line, an unknown key comes
// with the key meant, a bad value names the file that set it.
func LoadVerifyd(path string) (Verifyd, error) {
	cfg := DefaultVerifydConfig()
	src := map[string]string{}
	optional := path == ""
	if optional {
		path = VerifydFile
	}
	if err := decodeFile(path, &cfg, src, optional); err != nil {
		return Verifyd{}, err
	}
	if err := inFiles(cfg.check(), src); err != nil {
		return Verifyd{}, err
	}
	return cfg, nil
}

// Check validates every value, as [Config.Check] does.
func (c *Verifyd) Check() error { return inFiles(c.check(), nil) }

func (c *Verifyd) check() []*KeyError {
	var errs []*KeyError
	bad := func(key, value, want string) {
		errs = append(errs, &KeyError{Key: key, Value: value, Want: want})
	}
	checkPath(bad, "socket", c.Socket)
	checkPath(bad, "password_dir", c.PasswordDir)
	checkPath(bad, "pool_key", c.PoolKey)
	if strings.IndexFunc(c.TrustDomain, isSpaceOrControl) >= 0 || len(c.TrustDomain) > 255 {
		bad("trust_domain", quote(c.TrustDomain), "want an issuer name (no spaces, at most 255 bytes), as in a token's iss")
	}
	if c.KeyOwner < -1 {
		bad("key_owner", fmt.Sprint(c.KeyOwner), "want a uid, 0 for verifyd's own or -1 for no owner check")
	}
	if !(c.Rate > 0) || math.IsInf(c.Rate, 0) {
		bad("rate", fmt.Sprint(c.Rate), "want a positive number of requests per second")
	}
	if c.Burst < 1 {
		bad("burst", fmt.Sprint(c.Burst), "want 1 or more requests")
	}
	if !(c.RefetchRate >= MinRefetchRate && c.RefetchRate <= MaxRefetchRate) {
		bad("refetch_rate", fmt.Sprint(c.RefetchRate), fmt.Sprintf("want a number of refetches per second for the whole host, from %v to %v", MinRefetchRate, MaxRefetchRate))
	}
	if _, err := c.Level(); err != nil {
		bad("log_level", quote(c.LogLevel), "want a log level: debug, info, warn or error")
	}
	return errs
}

// Level is LogLevel as a slog level.
func (c *Verifyd) Level() (slog.Level, error) {
	var l slog.Level
	if c.LogLevel == "" {
		return l, errors.New("empty log level")
	}
	err := l.UnmarshalText([]byte(c.LogLevel))
	return l, err
}
