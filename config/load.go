package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// SystemFile is the site-wide configuration file. Tests may redirect it.
var SystemFile = "/etc/tokend/config.toml"

// MaxFileBytes is the largest configuration file Load reads.
const MaxFileBytes = 1 << 20

// UserFile returns the per-user configuration file,
// $XDG_CONFIG_HOME/tokend/config.toml, or ~/.config/tokend/config.toml when
// XDG_CONFIG_HOME is unset or not absolute (as the XDG spec asks). It returns
// "" when neither XDG_CONFIG_HOME nor HOME gives an absolute directory.
func UserFile() string {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if !filepath.IsAbs(dir) {
		home := os.Getenv("HOME")
		if !filepath.IsAbs(home) {
			return ""
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "tokend", "config.toml")
}

// Load reads the configuration. With path != "" it reads only that file,
// which must exist. Otherwise it reads SystemFile and then UserFile(), each
// optional, into the same Config starting from Default(), so a key in the
// user file overrides the same key in the system file and keys set in
// neither keep their defaults. The result is checked with Check; problems
// with a value name the file that set it.
func Load(path string) (Config, error) {
	cfg := Default()
	src := map[string]string{} // key -> file that set it last
	if path != "" {
		if err := decodeFile(path, &cfg, src, false); err != nil {
			return Config{}, err
		}
	} else {
		sys, user := SystemFile, UserFile()
		for _, p := range []string{sys, user} {
			if p == "" || (p == user && filepath.Clean(user) == filepath.Clean(sys)) {
				continue
			}
			if err := decodeFile(p, &cfg, src, true); err != nil {
				return Config{}, err
			}
		}
	}
	if err := inFiles(cfg.check(), src); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// inFiles names in each error the file that set its key (src: key -> file)
// and joins them; nil when there are none.
func inFiles(errs []*KeyError, src map[string]string) error {
	if len(errs) == 0 {
		return nil
	}
	list := make([]error, len(errs))
	for i, e := range errs {
		e.File = sourceOf(src, e.Key)
		list[i] = e
	}
	return errors.Join(list...)
}

// fileError is an error about one file; it keeps the underlying error (an
// *fs.PathError or a toml.ParseError) reachable with errors.As.
type fileError struct {
	msg string
	err error
}

func (e *fileError) Error() string { return e.msg }
func (e *fileError) Unwrap() error { return e.err }

// decodeFile decodes the TOML file at path over cfg (a pointer to a struct
// with toml tags: *Config, *Verifyd) and records in src which keys it set.
// Keys the struct does not have are errors, with a suggestion. A missing
// file is not an error when optional.
func decodeFile(path string, cfg any, src map[string]string, optional bool) error {
	f, err := os.Open(path)
	if err != nil {
		if optional && errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return &fileError{msg: "config: " + err.Error(), err: err}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return &fileError{msg: "config: " + err.Error(), err: err}
	}
	if len(data) > MaxFileBytes {
		return fmt.Errorf("config: %s: file is larger than %d bytes (1 MiB); refusing to read it", path, MaxFileBytes)
	}

	if line := tooDeep(data, maxNesting); line > 0 {
		return fmt.Errorf("config: %s:%d: arrays or inline tables nested more than %d deep", path, line, maxNesting)
	}

	md, err := toml.Decode(string(data), cfg)
	if err != nil {
		return decodeError(path, err)
	}

	if err := poolsNotTables(md); err != nil {
		return fmt.Errorf("config: %s: %w", path, err)
	}

	forgetReplacedPools(md, src)
	known := keysOf(reflect.TypeOf(cfg).Elem())
	undecoded := map[string]bool{}
	for _, k := range md.Undecoded() {
		undecoded[k.String()] = true
	}
	const maxReported = 10
	var errs []error
	reported := map[string]bool{} // unknown keys and tables
	more := 0
	for _, k := range md.Keys() {
		name := k.String()
		// Keys must be spelt exactly: the decoder also matches keys that
		// differ only in case, which would make "Dir" and "dir" in one
		// file race each other.
		if known[poolPattern(k)] && !undecoded[name] {
			src[name] = path
			for i := 1; i < len(k); i++ { // its tables, implicit ones too (sourceOf)
				src[k[:i].String()] = path
			}
			continue
		}
		if insideReported(k, reported) {
			continue
		}
		reported[name] = true
		if len(errs) == maxReported {
			more++
			continue
		}
		msg := fmt.Sprintf("config: %s: unknown key %s", path, quote(name))
		if s := suggestKey(k, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		errs = append(errs, errors.New(msg))
	}
	if more > 0 {
		errs = append(errs, fmt.Errorf("config: %s: and %d more unknown keys", path, more))
	}
	return errors.Join(errs...)
}

// insideReported reports whether a table enclosing k is in reported.
func insideReported(k toml.Key, reported map[string]bool) bool {
	for i := 1; i < len(k); i++ {
		if reported[k[:i].String()] {
			return true
		}
	}
	return false
}

// maxNesting bounds how deeply arrays and inline tables may nest. tokend's
// keys need 1; the TOML decoder recurses per level, so a hostile file of
// nothing but "[" or "{a=" would otherwise cost seconds of CPU or gigabytes
// of memory.
const maxNesting = 16

// tooDeep returns the line at which brackets or braces in data nest more
// than limit deep, or 0. It skips strings and comments, so it sees the
// structure the TOML parser will see; where it is unsure (malformed input)
// the parser reports the real error.
func tooDeep(data []byte, limit int) int {
	depth, line := 0, 1
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch c {
		case '\n':
			line++
		case '#':
			for i+1 < len(data) && data[i+1] != '\n' {
				i++
			}
		case '[', '{':
			depth++
			if depth > limit {
				return line
			}
		case ']', '}':
			if depth > 0 {
				depth--
			}
		case '"', '\'':
			multi := i+2 < len(data) && data[i+1] == c && data[i+2] == c
			if multi {
				i += 3
			} else {
				i++
			}
			for ; i < len(data); i++ {
				d := data[i]
				if d == '\n' {
					if !multi { // a single-line string cannot span lines
						line++
						break
					}
					line++
					continue
				}
				if d == '\\' && c == '"' {
					if i+1 < len(data) && data[i+1] == '\n' {
						line++
					}
					i++
					continue
				}
				if d != c {
					continue
				}
				if !multi {
					break
				}
				if i+2 < len(data) && data[i+1] == c && data[i+2] == c {
					// Up to two more quotes may belong to the string.
					i += 2
					for n := 0; n < 2 && i+1 < len(data) && data[i+1] == c; n++ {
						i++
					}
					break
				}
			}
		}
	}
	return 0
}

// decodeError turns a decoder error into one that names the file and line.
func decodeError(path string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		line := pe.Position.Line
		msg := pe.Message
		switch {
		case pe.LastKey != "" && (strings.HasPrefix(msg, errInvalidDuration) || strings.HasPrefix(msg, errNegativeDuration)):
			// Our own Duration error: the last key is the one at fault.
			msg = pe.LastKey + ": " + msg
		case pe.LastKey != "":
			msg += fmt.Sprintf(" (last key %q)", pe.LastKey)
		}
		return &fileError{msg: fmt.Sprintf("config: %s:%d: %s", path, line, msg), err: pe}
	}
	// Type mismatches come as plain errors:
	// toml: line 3 (last key "limits.max_files"): incompatible types: TOML value has type string; destination has type integer
	msg := strings.TrimPrefix(err.Error(), "toml: ")
	if m := typeErrRE.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("%s:%s: %s: %s", path, m[1], m[2], m[3])
		msg = strings.Replace(msg, "; destination has type slice", "; want an array", 1)
		msg = strings.Replace(msg, "; destination has type ", "; want ", 1)
		return &fileError{msg: "config: " + msg, err: err}
	}
	return &fileError{msg: fmt.Sprintf("config: %s: %s", path, msg), err: err}
}

var typeErrRE = regexp.MustCompile(`^line ([0-9]+) \(last key "([^"]*)"\): (.*)$`)

// knownKeys returns every valid dotted key of Config, tables included.
func knownKeys() map[string]bool { return keysOf(reflect.TypeOf(Config{})) }

// keysOf returns every valid dotted key of the struct type t, tables
// included.
func keysOf(t reflect.Type) map[string]bool {
	keys := map[string]bool{}
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || name == "-" {
				continue
			}
			key := prefix + name
			keys[key] = true
			switch f.Type.Kind() {
			case reflect.Struct:
				walk(f.Type, key+".")
			case reflect.Map:
				keys[key+".*"] = true
				walk(f.Type.Elem(), key+".*.")
			}
		}
	}
	walk(t, "")
	return keys
}

// suggest returns the known key the user most likely meant by key, or "".
func suggest(key string, known map[string]bool) string {
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	sort.Strings(names)
	// Same spelling but for case.
	for _, n := range names {
		if strings.EqualFold(n, key) {
			return n
		}
	}
	// The right name in the wrong table ("timeout" for "fetch.timeout").
	leaf := key[strings.LastIndexByte(key, '.')+1:]
	for _, n := range names {
		if n[strings.LastIndexByte(n, '.')+1:] == leaf {
			return n
		}
	}
	// A typo.
	if len(key) > 64 {
		return ""
	}
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(strings.ToLower(key), n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
