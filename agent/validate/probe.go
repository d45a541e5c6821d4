package validate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/tokend/tokend/token"
)

// Probe tries a token against the pool with a command (for example
// `condor_ping -type collector READ`), for sites without verifyd. The command
// sees only that token: a private directory holding it is passed as
// _CONDOR_SEC_TOKEN_DIRECTORY, under $XDG_RUNTIME_DIR (memory, mode 0700),
// zeroed and removed as soon as the command exits.
//
// Verdicts are cached per token for Every, so that periodic re-checks do not
// hammer the pool.
type Probe struct {
	Command []string
	Dir     string        // parent of the private directories; "" = $XDG_RUNTIME_DIR
	Timeout time.Duration // per run; default 30s
	Every   time.Duration // cache lifetime of a verdict; default 5m

	mu    sync.Mutex // guards cache
	cache map[[32]byte]verdict
}

type verdict struct {
	r  token.Reason
	at time.Time
}

func (*Probe) Name() string { return KeyProbe }

// Markers of an IDTOKENS failure in HTCondor's output: the token was tried
// and refused, a verdict.
var refused = [][]byte{[]byte("AUTHENTICATE:1004"), []byte("Failed to authenticate using IDTOKENS")}

func (p *Probe) CheckKey(ctx context.Context, raw []byte, t *token.Token) (token.Reason, error) {
	key := sha256.Sum256(raw)
	p.mu.Lock()
	if v, ok := p.cache[key]; ok && time.Since(v.at) < p.every() {
		p.mu.Unlock()
		return v.r, nil
	}
	p.mu.Unlock()

	out, err := p.run(ctx, raw)
	var r token.Reason
	switch {
	case err == nil:
		r = token.Valid
	case containsAny(out, refused):
		r = token.RotatedKey
	default:
		return "", fmt.Errorf("%w: probe %s: %v", ErrCannotTell, p.Command[0], err)
	}
	p.mu.Lock()
	if p.cache == nil {
		p.cache = make(map[[32]byte]verdict)
	}
	for k, v := range p.cache {
		if time.Since(v.at) >= p.every() {
			delete(p.cache, k)
		}
	}
	p.cache[key] = verdict{r, time.Now()}
	p.mu.Unlock()
	return r, nil
}

func (p *Probe) every() time.Duration {
	if p.Every > 0 {
		return p.Every
	}
	return 5 * time.Minute
}

// run offers raw alone to the probe command and returns its combined output.
func (p *Probe) run(ctx context.Context, raw []byte) ([]byte, error) {
	parent := p.Dir
	if parent == "" {
		parent = os.Getenv("XDG_RUNTIME_DIR")
	}
	if parent == "" {
		return nil, errors.New("no $XDG_RUNTIME_DIR to hold the probed token in memory")
	}
	dir, err := os.MkdirTemp(parent, "tokend-probe-")
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "token")
	defer func() {
		// Overwrite before unlinking: tmpfs frees the pages unzeroed.
		if f, err := os.OpenFile(file, os.O_WRONLY, 0); err == nil {
			f.Write(make([]byte, len(raw)+1))
			f.Close()
		}
		os.RemoveAll(dir)
	}()
	// Written as it is, with no copy on the heap.
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	_, err = f.Write(raw)
	if err == nil {
		_, err = f.Write([]byte{'\n'})
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.Command[0], p.Command[1:]...)
	cmd.Env = append(os.Environ(),
		"_CONDOR_SEC_TOKEN_DIRECTORY="+dir,
		"_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS=IDTOKENS",
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout = &limitWriter{w: &out, n: 64 << 10}
	cmd.Stderr = cmd.Stdout
	err = cmd.Run()
	return out.Bytes(), err
}

func containsAny(b []byte, subs [][]byte) bool {
	for _, s := range subs {
		if bytes.Contains(b, s) {
			return true
		}
	}
	return false
}

// limitWriter keeps the first n bytes and drops the rest.
type limitWriter struct {
	w *bytes.Buffer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if room := l.n - l.w.Len(); room > 0 {
		l.w.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
