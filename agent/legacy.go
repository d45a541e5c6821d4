package agent

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/secmem"
)

// importLegacy reads the token files already on disk in the token directory,
// before the mount hides them, and keeps the valid ones in memory. With
// legacy = move the imported files are deleted; with ignore nothing is read.
// Either way the agent says what it left on disk.
func (a *Agent) importLegacy() {
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		a.log.Warn("could not read the token directory before mounting", "dir", a.dir, "err", err)
		return
	}
	var imported, left []string
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(a.dir, e.Name())
		if a.cfg.Legacy == config.LegacyIgnore {
			left = append(left, e.Name())
			continue
		}
		if err := a.importFile(e.Name(), path); err != nil {
			a.log.Warn("left a file on disk that could not be imported", "file", path, "reason", err.Error())
			left = append(left, e.Name())
			continue
		}
		if a.cfg.Legacy == config.LegacyMove {
			if err := os.Remove(path); err != nil {
				a.log.Warn("imported a token but could not delete its file", "file", path, "err", err)
				left = append(left, e.Name())
			}
		} else {
			left = append(left, e.Name())
		}
		imported = append(imported, e.Name())
	}
	if len(imported) > 0 {
		a.log.Info("imported token files from disk", "dir", a.dir, "files", imported, "legacy", a.cfg.Legacy)
	}
	if len(left) > 0 {
		a.log.Warn("plaintext files remain on disk under the mount: HTCondor no longer sees them, but they are still on disk; delete them, or set legacy = \"move\"",
			"dir", a.dir, "files", left)
	}
}

func (a *Agent) importFile(name, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	max := a.store.Limits().MaxFileSize
	buf, err := secmem.New(max + 1)
	if err != nil {
		return err
	}
	defer buf.Wipe()
	n, err := io.ReadFull(f, buf.Bytes())
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return err
	}
	if n > max {
		return fmt.Errorf("larger than %d bytes", max)
	}
	content := buf.Bytes()[:n]
	// HTCondor stops reading at the first NUL.
	for i, c := range content {
		if c == 0 {
			content = content[:i]
			break
		}
	}
	_, err = a.store.Put(name, content, a.checker.Quick)
	return err
}
