// Package fusefs shows a store.Store as a flat directory of token files
// through FUSE, in the shape HTCondor's read_secure_file expects: regular
// files owned by the user, mode 0600, exact sizes, inode numbers and mtimes
// that change only when content does.
//
// # Reads cost no round trip
//
// HTCondor tools read every token file on every command. The filesystem lets
// the kernel answer all of it from its caches:
//   - OPEN, OPENDIR and FLUSH answer ENOSYS once, after which the kernel never
//     sends them again on this mount (fc->no_open, no_opendir, no_flush).
//     Without an open there is no file handle: reads, writes and readdir use
//     the inode alone.
//   - Entries, negative entries (but gated names': see "The gate") and
//     attributes are cached for Options.CacheTTL, file pages are kept (the
//     kernel's no-open default is FOPEN_KEEP_CACHE), and directory listings
//     are cached (FOPEN_CACHE_DIR, also a no-open default).
//
// Refusing OPEN and OPENDIR needs the kernel's no_open and no_opendir
// support (FUSE_NO_OPEN_SUPPORT, FUSE_NO_OPENDIR_SUPPORT in INIT; upstream
// 5.1 for opendir, EL 8's 4.18 only where backported): an older kernel hands
// the ENOSYS to open(2) and opendir(3). So Init reads what the kernel offers,
// and where it lacks either, OPEN and OPENDIR are answered with the flags the
// kernel would have used itself (keep the page cache, cache the listing, no
// FLUSH), with no per-handle state: file handle 0, and everything else
// works as above, at one round trip per open (FS.OpenHandles, shown by
// `tokend status` and doctor; Options.ForceOpenHandles forces it for tests).
//
// # Invalidation
//
// Because the kernel answers from caches, every change must be pushed to it.
// The store reports each change (store.OnChange); the notifier goroutine
// turns it into NotifyEntry / NotifyDelete / NotifyContent calls, including
// the directory itself (its listing cache) and the page cache of a removed
// file (an open descriptor must not keep reading a hidden token); while a
// request is held at a gate, entry invalidations wait (see "The gate"). Writes
// through the mount also drop the written inode's pages: the kernel caches
// what the writer wrote, and that is not what the file holds until a draft
// is committed.
//
// # The gate
//
// After a key change hid a pool's session token, the tools find no token
// until the fresh one is fetched. So the agent closes a gate on that name
// (FS.CloseGate), and a user's tool that looks for it (a LOOKUP of the name,
// or a READDIR at offset 0: the start of a listing) waits for the fresh
// token: the request is held until the gate opens, at the first of the
// fresh token being in the store (the waiter answers from the store, not
// when the kernel has been told), Gate.Open (the fetch failed), the first
// arrival + fetch.wait (each waiter on its own timer), or OpenGates (wipe,
// SIGTERM, unmount). An interrupted request (Ctrl-C) answers EINTR at once.
// Other operations never wait. What keeps it safe with the kernel:
//   - A held LOOKUP or READDIR holds the directory's lock shared, and an
//     entry invalidation (NotifyEntry, NotifyDelete) takes it exclusively.
//     So while a request is held the notifier sends only inode
//     invalidations (attributes, pages, the listing) and holds back entry
//     ones, in order, until none is held; and a gate holds requests only
//     once the invalidations queued before CloseGate (the hide's) have been
//     sent: the notifier arms it in order.
//   - A miss of a gated name is never cached: the fresh token is found the
//     moment it is in the store, whatever entry invalidation is held back.
//   - Who waits: only a process whose real, effective, saved and filesystem
//     uids are all the owner's, read from /proc/<tid>/status (the FUSE
//     header's pid is a thread id); never root (with AllowRoot, HTCondor's
//     schedd), never the agent (Options.AgentPID) or its descendants (the
//     fetch command; the agent is a child subreaper, so a double-forked
//     child stays under it), never when /proc cannot tell.
//   - The wait stays below half the kernel's FUSE request timeout, where it
//     has one (RequestTimeout, WaitLimit): a request unanswered past it
//     aborts the whole mount.
//
// Two effects of the held lock, bounded by fetch.wait: creating or renaming
// a file in the directory waits for the held requests (it takes the lock
// exclusively), and the kernel queues a lookup of the very name a held
// LOOKUP is looking up behind it, whoever asks (root and the agent's
// descendants too; listings and other names are not queued). The fetch
// command never reads the mount: it has a token directory of its own
// (agent/fetch).
//
// # Writes
//
// With no open and no flush the kernel never says when a writer is done with
// an existing file. So each inode being written has a draft (in secmem), the
// content as its writer sees it: WRITE and truncation change the draft, and
// after each change the draft is checked (token.CheckDraft):
//   - complete, with at least one token: it becomes the file's content at
//     once, atomically for readers;
//   - bad (a line that is not a token): the write fails with EINVAL, the draft
//     is dropped and the file keeps its previous content;
//   - still pending (empty after truncation, a token half written): readers
//     keep seeing the previous content.
//
// The draft outlives each commit, so the writer's next write lands where the
// writer thinks it does even if the quick check hid one of its tokens at the
// commit.
//
// Readers and writers share the kernel's page cache, which the kernel fills
// with a writer's bytes before WRITE reaches us. So a truncation (the start
// of a rewrite) is answered with the size the writer asked for, which makes
// the kernel drop the file's cached pages itself (readers see an empty file
// until the rewrite is committed, never half of one), and every write moves
// the mtime on by at least a second (HTCondor's "modified during reading"
// check compares whole seconds). An append racing a reader within one round
// trip can still be read half written, as on any filesystem. The agent's own
// changes never can: they give the name a new inode and never edit one a
// reader holds (the store's package doc, "A reader never sees half of a
// file", states the rule; the notifier drops a hidden token's old inode at
// once and lets a refreshed one's pages linger a moment).
//
// A draft is dropped after Options.DraftTimeout without writes (with a log
// line if its last state was never committed), when a writer closes a file
// it created (the kernel says so only until OPEN first answered ENOSYS), or
// when its inode is gone (removed, renamed over, or replaced by the agent's
// refresh or hiding).
//
// # New files
//
// Nor does the kernel say when a created file's descriptor closes, so a
// refused write could not take the file with it. Instead a file made by
// CREATE is pending (the store's "Files being created") until its first
// complete token is committed: its creator writes, truncates and fstats it
// through the descriptor, but LOOKUP answers ENOENT (not cached while the
// name is being created), READDIR does not list it, and the CREATE reply
// and its attributes have timeouts of 0, so nothing of it lingers in the
// kernel. Its draft starts at CREATE. A refused write (not a token file,
// too big) drops it at once and an abandoned one (a half token, touch)
// after the draft timeout, each with a log line ending "nothing is left";
// a file of the same name, and the hidden tokens the store remembers for
// it, are untouched, so a failed `condor_token_fetch -token NAME` destroys
// nothing. The first commit gives the name its new content as a rename
// over it would. MKNOD of a regular file is refused (EPERM): such a file
// could never be written.
//
// So a program that creates a file and then looks it up by path before
// writing its token (stat, a second open) finds nothing: HTCondor's
// writers, cp, shell redirections and touch use the descriptor they
// created, and work.
//
// # Locking
//
// FS.mu guards the drafts and the handles from CREATE; the directory mtime
// is atomic. The store has its own lock;
// FS.mu may be held while calling the store, never the other way round (the
// store calls listeners after unlocking). Notify* is only called by the
// notifier (its goroutine, and its flush at unmount), with no lock held and
// never inside a request handler:
// the kernel may hold locks that wait for the very request being served.
//
// # Memory
//
// Token bytes reach go-fuse's buffers on the way in and out; the filesystem
// clears what it can reach (as read in go-fuse v2.12.1):
//   - WRITE: the kernel's request is read into a buffer from go-fuse's
//     read pool, and the data handed to Write is a slice of that buffer.
//     Write zeroes it in place once it is in the draft (or refused), so the
//     buffer goes back to the pool without it.
//   - READ: Write's counterpart is go-fuse's reply buffer (its buffer
//     pool), which Read fills from the store; the result's Done zeroes it,
//     and go-fuse calls Done once the reply is written (Slices makes it
//     writev the buffer directly, splice or not).
//   - Drafts are secmem; DropDrafts zeroes them all at a wipe.
//
// Out of reach: go-fuse copies a request shorter than 128 bytes into the
// request's small inline buffer (which Write then zeroes) and returns the
// read buffer to the pool uncleared. A WRITE request is 80 bytes of headers
// plus the data, so a write(2) of under 48 bytes (a program writing a token
// in small pieces) leaves that piece in a pooled read buffer until a later
// request overwrites it or the garbage collector frees the buffer. Tools
// write a token file in one write(2), which is cleared. And the kernel's
// page cache holds what was read (and what was written to a file not
// created through the mount) until the notifier invalidates those pages;
// the kernel does not zero the pages it frees.
//
// # Access
//
// Without allow_other the kernel admits only processes whose uids are all the
// mount owner's, cached or not. Options.AllowRoot (HTCondor's per-user
// flocking) mounts with allow_other and default_permissions: the kernel then
// checks the 0700/0600 modes against every caller, including for cached
// entries and pages that never reach the filesystem, which admits the owner
// and root only. Every request that does reach the filesystem is checked
// again (owner, or root when AllowRoot is set).
package fusefs
