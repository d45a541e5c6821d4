//go:build ignore

/*
 * tokend-pam is the program on tokend's PAM line:
 *
 *	session optional pam_exec.so quiet stdout /usr/bin/tokend-pam
 *
 * pam_exec runs it as root with the PAM environment, which a user may partly
 * set (pam_env with user_readenv=1). So it is C, linked statically: no
 * dynamic loader and no language runtime (Go's reads GOMAXPROCS, GODEBUG,
 * GOTRACEBACK, ... before main) acts on that environment. It reads PAM_USER,
 * PAM_TYPE and PAM_SERVICE from the raw environment block, refuses a block
 * that names one of them twice, and runs `tokend session` (the tokend binary
 * beside it, with its own arguments) with an environment it builds itself.
 * The format is session/pamenv's (Launch): its tests compare the two.
 *
 * A refusal goes to standard error (pam_exec's log= file, or the user's
 * terminal with its stdout option) and to syslog (authpriv, tag tokend), and
 * the exit status is 1: with "optional", the login goes on without tokend.
 *
 * It calls no getenv, no setlocale, nothing that uses NSS, and not
 * syslog(3), which reads the time zone (TZ is the user's): it writes to
 * /dev/log itself. Every buffer is static and bounded. (The static C
 * library's start-up parses GLIBC_TUNABLES and LD_LIBRARY_PATH, for malloc
 * tuning and dlopen: nothing here depends on either.)
 *
 * The "//go:build ignore" line above keeps the go command from refusing a C
 * file in a package without cgo.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

/* The contract with `tokend session` (session/pamenv). */
#define LAUNCHED "TOKEND_PAM_LAUNCHER=1"
#define PATH_ENV "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
#define CARRY "TOKEND_USERENV_"

/* The most of /proc/self/environ read; a larger block is refused. The kernel
 * allows 128 KiB per variable; a PAM environment is a few KiB. */
#define BLOCK_MAX (512 * 1024)
/* Each entry is at least "X=" and its NUL. */
#define ENTRIES_MAX (BLOCK_MAX / 3 + 1)
/* The most arguments on the PAM line. */
#define ARGS_MAX 256
/* logsafe.Max: the most bytes of a value in a message. */
#define SAFE_MAX 512
#define MSG_MAX 4096

static char block[BLOCK_MAX + 1];
static const char *entries[ENTRIES_MAX];
static const char *carried[ENTRIES_MAX];
static char *newenv[ENTRIES_MAX + 6];
/* Each carried entry gains the prefix; entries are at least 4 bytes
 * ("TZ=" and a NUL). */
static char carrybuf[BLOCK_MAX + (BLOCK_MAX / 4 + 1) * sizeof CARRY];
static char *newargv[ARGS_MAX + 3];
static char self[4096];
static char tokend[4096 + sizeof "tokend"];
static char msg[MSG_MAX];
static size_t msglen;
static int msgfull;

/* add appends n bytes to msg; what does not fit is dropped and marked. */
static void add(const char *s, size_t n)
{
	/* Room is kept for the mark. */
	static const char mark[] = "…";
	size_t room = sizeof msg - sizeof mark - msglen;
	if (msgfull)
		return;
	if (n > room) {
		memcpy(msg + msglen, s, room);
		msglen += room;
		memcpy(msg + msglen, mark, sizeof mark - 1);
		msglen += sizeof mark - 1;
		msgfull = 1;
		return;
	}
	memcpy(msg + msglen, s, n);
	msglen += n;
}

static void adds(const char *s)
{
	add(s, strlen(s));
}

static void addf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* addf appends a short formatted text (a name and a number). */
static void addf(const char *fmt, ...)
{
	char buf[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	add(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* syslog_msg sends msg to the local syslog socket, facility authpriv,
 * severity warning, tag tokend, without a timestamp (syslog adds it). */
static void syslog_msg(const char *m, size_t n)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX, .sun_path = "/dev/log" };
	char line[MSG_MAX + 64];
	int fd, len;

	len = snprintf(line, sizeof line, "<%d>tokend[%ld]: %.*s", 10 << 3 | 4, (long)getpid(), (int)n, m);
	if (len < 0)
		return;
	if ((size_t)len >= sizeof line)
		len = sizeof line - 1;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 && write(fd, line, (size_t)len) < 0) {
		/* Nowhere left to say it: standard error has it. */
	}
	close(fd);
}

/* refuse logs msg, prefixed, on standard error and to syslog, and returns
 * the exit status. */
static int refuse(void)
{
	static const char prefix[] = "tokend-pam: ";
	char line[sizeof prefix + MSG_MAX + 1];
	size_t n = 0, off = 0;

	memcpy(line, prefix, sizeof prefix - 1);
	n = sizeof prefix - 1;
	memcpy(line + n, msg, msglen);
	n += msglen;
	syslog_msg(line, n);
	line[n++] = '\n';
	while (off < n) {
		ssize_t w = write(STDERR_FILENO, line + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	return 1;
}

/* decode returns the code point at s (n bytes left) and its length as Go's
 * utf8.DecodeRune does: -1 and length 1 for an invalid sequence. */
static long decode(const unsigned char *s, size_t n, size_t *size)
{
	unsigned char c = s[0];
	long r, min;
	size_t len, i;

	*size = 1;
	if (c < 0x80)
		return c;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2, r = c & 0x1f, min = 0x80;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3, r = c & 0x0f, min = 0x800;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4, r = c & 0x07, min = 0x10000;
	else
		return -1;
	if (n < len)
		return -1;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return -1;
		r = r << 6 | (s[i] & 0x3f);
	}
	if (r < min || r > 0x10ffff || (r >= 0xd800 && r <= 0xdfff))
		return -1;
	*size = len;
	return r;
}

/* needs_u reports whether logsafe.Text writes r (>= 0x80) as \uXXXX: C1
 * controls, line and paragraph separators, bidirectional controls. */
static int needs_u(long r)
{
	return (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 || r == 0x061c ||
	       r == 0x200e || r == 0x200f || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069);
}

/* hex writes \ kind and digits lowercase hex digits of v into p, and
 * returns the length. */
static size_t hex(char *p, char kind, unsigned long v, size_t digits)
{
	size_t i;

	p[0] = '\\';
	p[1] = kind;
	for (i = 0; i < digits; i++)
		p[2 + i] = "0123456789abcdef"[(v >> 4 * (digits - 1 - i)) & 0xf];
	return 2 + digits;
}

/* add_safe appends v (n bytes) as logsafe.Text makes it safe for a log
 * line: controls and invalid bytes escaped, at most SAFE_MAX bytes. */
static void add_safe(const char *v, size_t n)
{
	/* The escaped text's first SAFE_MAX+1 bytes, and its whole length. */
	char out[SAFE_MAX + 1];
	size_t total = 0, i = 0, keep;
	char piece[8], marker[32];

	while (i < n) {
		size_t size, plen, j;
		long r = decode((const unsigned char *)v + i, n - i, &size);
		if (r < 0 || (r < 0x80 && (r < 0x20 || r == 0x7f))) {
			switch (r) {
			case '\n': memcpy(piece, "\\n", 2), plen = 2; break;
			case '\r': memcpy(piece, "\\r", 2), plen = 2; break;
			case '\t': memcpy(piece, "\\t", 2), plen = 2; break;
			default:
				plen = hex(piece, 'x', (unsigned char)v[i], 2);
			}
		} else if (needs_u(r)) {
			plen = hex(piece, 'u', (unsigned long)r, 4);
		} else {
			memcpy(piece, v + i, size);
			plen = size;
		}
		for (j = 0; j < plen; j++, total++)
			if (total < sizeof out)
				out[total] = piece[j];
		i += size;
	}
	if (total <= SAFE_MAX) {
		add(out, total);
		return;
	}
	/* As logsafe's cut: keep what fits beside the marker, whole runes. */
	keep = SAFE_MAX - (size_t)snprintf(marker, sizeof marker, "…[+%zu bytes]", total);
	while (keep > 0 && ((unsigned char)out[keep] & 0xc0) == 0x80)
		keep--;
	add(out, keep);
	addf("…[+%zu bytes]", total - keep);
}

/* name_is reports whether entry e is named name. */
static int name_is(const char *e, const char *name)
{
	size_t n = strlen(name);
	return strncmp(e, name, n) == 0 && e[n] == '=';
}

/* for_agent reports whether a PAM environment variable (entry e) may reach
 * the user's agent: CONDOR_CONFIG, _CONDOR_* (letters, digits, '_', '.'),
 * LANG, LC_ALL, TZ. */
static int for_agent(const char *e)
{
	static const char *const names[] = { "CONDOR_CONFIG", "LANG", "LC_ALL", "TZ" };
	size_t i;
	const char *p;

	for (i = 0; i < sizeof names / sizeof names[0]; i++)
		if (name_is(e, names[i]))
			return 1;
	if (strncmp(e, "_CONDOR_", 8) != 0 || e[8] == '=')
		return 0;
	for (p = e + 8; *p != '='; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		      *p == '_' || *p == '.'))
			return 0;
	return 1;
}

/* by_name orders entries by name, then by place in the block (the last of
 * a name wins, as in a shell). */
static int by_name(const void *a, const void *b)
{
	const char *x = *(const char *const *)a, *y = *(const char *const *)b;
	size_t i;

	for (i = 0;; i++) {
		unsigned char cx = x[i] == '=' ? 0 : (unsigned char)x[i];
		unsigned char cy = y[i] == '=' ? 0 : (unsigned char)y[i];
		if (cx != cy)
			return cx < cy ? -1 : 1;
		if (cx == 0)
			break;
	}
	return x < y ? -1 : x > y;
}

static int same_name(const char *x, const char *y)
{
	size_t n = (size_t)(strchr(x, '=') - x);
	return strncmp(x, y, n + 1) == 0;
}

/* read_block reads /proc/self/environ; it returns its length, or -1 after
 * writing why into msg. */
static ssize_t read_block(void)
{
	size_t n = 0;
	int fd = open("/proc/self/environ", O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		adds("cannot read the environment: /proc/self/environ: ");
		adds(strerror(errno));
		adds("; nothing done");
		return -1;
	}
	for (;;) {
		ssize_t r = read(fd, block + n, sizeof block - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int err = errno;
			close(fd);
			adds("cannot read the environment: /proc/self/environ: ");
			adds(strerror(err));
			adds("; nothing done");
			return -1;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n == sizeof block) {
			close(fd);
			addf("the PAM environment is larger than %d KiB", BLOCK_MAX / 1024);
			adds(": a user may have set huge variables (pam_env with user_readenv=1); "
			     "nothing done for this login");
			return -1;
		}
	}
	close(fd);
	block[n] = '\0'; /* the last entry's end, should the block lack it */
	return (ssize_t)n;
}

int main(int argc, char **argv)
{
	static const char *const items[] = { "PAM_USER", "PAM_TYPE", "PAM_SERVICE" };
	size_t nentries = 0, ncarried = 0, nenv = 0, used = 0, i, k;
	ssize_t len, self_len;
	char *slash;
	int a;

	len = read_block();
	if (len < 0)
		return refuse();
	/* Split: entries end in NUL; those without a name ("x", "=x") go. */
	for (i = 0; i < (size_t)len; i += strlen(block + i) + 1) {
		char *eq = strchr(block + i, '=');
		if (eq != NULL && eq != block + i && nentries < ENTRIES_MAX)
			entries[nentries++] = block + i;
	}

	newenv[nenv++] = PATH_ENV;
	newenv[nenv++] = LAUNCHED;
	for (k = 0; k < sizeof items / sizeof items[0]; k++) {
		size_t count = 0;
		const char *value = NULL;
		for (i = 0; i < nentries; i++)
			if (name_is(entries[i], items[k]))
				count++, value = entries[i];
		if (count > 1) {
			size_t seen = 0, n = strlen(items[k]);
			addf("%s appears %zu times in the PAM environment (", items[k], count);
			for (i = 0; i < nentries; i++) {
				if (!name_is(entries[i], items[k]))
					continue;
				adds(seen++ ? ", \"" : "\"");
				add_safe(entries[i] + n + 1, strlen(entries[i] + n + 1));
				adds("\"");
			}
			adds("): a user may have set it (pam_env with user_readenv=1); nothing done for this login");
			return refuse();
		}
		if (value != NULL && value[strlen(items[k]) + 1] != '\0')
			newenv[nenv++] = (char *)value;
	}

	for (i = 0; i < nentries; i++)
		if (for_agent(entries[i]))
			carried[ncarried++] = entries[i];
	qsort(carried, ncarried, sizeof carried[0], by_name);
	for (i = 0; i < ncarried; i++) {
		size_t n = strlen(carried[i]) + 1;
		if (i + 1 < ncarried && same_name(carried[i], carried[i + 1]))
			continue; /* a later one of the same name wins */
		if (used + sizeof CARRY - 1 + n > sizeof carrybuf) {
			adds("the PAM environment is too large to pass on; nothing done for this login");
			return refuse();
		}
		newenv[nenv++] = carrybuf + used;
		memcpy(carrybuf + used, CARRY, sizeof CARRY - 1);
		memcpy(carrybuf + used + sizeof CARRY - 1, carried[i], n);
		used += sizeof CARRY - 1 + n;
	}
	newenv[nenv] = NULL;

	/* The tokend installed beside this program. */
	self_len = readlink("/proc/self/exe", self, sizeof self);
	if (self_len < 0 || (size_t)self_len >= sizeof self) {
		adds("cannot find where tokend-pam is installed: readlink /proc/self/exe: ");
		adds(self_len < 0 ? strerror(errno) : "path too long");
		adds("; nothing done");
		return refuse();
	}
	self[self_len] = '\0';
	slash = strrchr(self, '/');
	if (slash == NULL) {
		adds("cannot find where tokend-pam is installed: /proc/self/exe is ");
		add_safe(self, (size_t)self_len);
		adds("; nothing done");
		return refuse();
	}
	slash[1] = '\0';
	snprintf(tokend, sizeof tokend, "%stokend", self);

	if (argc - 1 > ARGS_MAX) {
		addf("more than %d arguments on the PAM line; nothing done", ARGS_MAX);
		return refuse();
	}
	newargv[0] = tokend;
	newargv[1] = "session";
	for (a = 1; a < argc; a++)
		newargv[a + 1] = argv[a];
	newargv[argc + 1] = NULL;
	execve(tokend, newargv, newenv);
	adds("cannot run ");
	adds(tokend);
	adds(": ");
	adds(strerror(errno));
	adds("; nothing done");
	return refuse();
}
