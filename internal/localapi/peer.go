package localapi

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of a connection, as the kernel
// recorded it when the connection was made (SO_PEERCRED).
type Peer struct {
	UID uint32
	PID int32
}

type peerKey struct{}

// PeerOf returns the peer of the connection a request came on. ok is false
// when the connection did not come through a listener of [NewListener].
func PeerOf(ctx context.Context) (p Peer, ok bool) {
	p, ok = ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// WithPeer returns ctx carrying p, as a request's context does under
// [NewServer]; tests that call a handler directly use it.
func WithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// Limits bound the connections a listener keeps open; 0 is no limit.
type Limits struct {
	PerUID int // from one uid
	Total  int // from everyone
}

// logEvery is how often refused connections are logged at most.
const logEvery = 10 * time.Second

// listener reads SO_PEERCRED once per connection and enforces Limits.
type listener struct {
	net.Listener
	lim Limits
	log *slog.Logger

	mu     sync.Mutex // guards what follows
	conns  map[uint32]int
	all    int
	logged time.Time // last "connection limit" log line
}

// NewListener wraps l, a Unix stream socket: each accepted connection
// carries its peer's credentials, read once, for [PeerOf]. A connection
// whose peer cannot be read (not a Unix socket) is logged and closed. A
// connection over lim is answered 429 [CodeTooManyConns] with Retry-After
// and closed.
func NewListener(l net.Listener, lim Limits, log *slog.Logger) net.Listener {
	return &listener{Listener: l, lim: lim, log: log, conns: map[uint32]int{}}
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		p, err := peerCred(c)
		if err != nil {
			l.log.Warn("cannot read the peer's credentials; closing the connection", "error", err)
			c.Close()
			continue
		}
		if !l.take(p.UID) {
			go refuse(c)
			continue
		}
		return &conn{Conn: c, peer: p, l: l}, nil
	}
}

func peerCred(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, unix.ENOTSOCK
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, cerr
	}
	return Peer{UID: cred.Uid, PID: cred.Pid}, nil
}

func (l *listener) take(uid uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if (l.lim.Total > 0 && l.all >= l.lim.Total) || (l.lim.PerUID > 0 && l.conns[uid] >= l.lim.PerUID) {
		if now := time.Now(); now.Sub(l.logged) >= logEvery {
			l.logged = now
			l.log.Warn("connection limit reached; refusing connections", "peer_uid", uid,
				"uid_conns", l.conns[uid], "uid_limit", l.lim.PerUID, "conns", l.all, "limit", l.lim.Total)
		}
		return false
	}
	l.all++
	l.conns[uid]++
	return true
}

func (l *listener) release(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all--
	if l.conns[uid]--; l.conns[uid] <= 0 {
		delete(l.conns, uid)
	}
}

// refuse answers a connection over the limits with a 429 and closes it.
func refuse(c net.Conn) {
	defer c.Close()
	body := envelope(CodeTooManyConns, "too many connections from this uid")
	c.SetDeadline(time.Now().Add(time.Second))
	io.WriteString(c, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+string(body))
}

// conn is an accepted connection and its peer.
type conn struct {
	net.Conn
	peer Peer
	l    *listener
	once sync.Once
}

func (c *conn) Close() error {
	c.once.Do(func() { c.l.release(c.peer.UID) })
	return c.Conn.Close()
}
