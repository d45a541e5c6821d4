package verifyapi

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/localapi"
)

// isUnavailable reports whether err is a transport failure.
func isUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

func TestClientUnavailable(t *testing.T) {
	c := NewClient(t.TempDir() + "/none.sock")
	if _, err := c.Verify(context.Background(), []byte("a.b.c")); !isUnavailable(err) {
		t.Fatalf("Verify without a server: %v", err)
	}
	if _, err := c.Generation(context.Background()); !isUnavailable(err) {
		t.Fatalf("Generation without a server: %v", err)
	}
	// Something that is not verifyd on the socket.
	sock := t.TempDir() + "/other.sock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>") }))
	if _, err := NewClient(sock).Generation(context.Background()); !isUnavailable(err) {
		t.Fatalf("a non-verifyd server: %v", err)
	}
	// A 5xx is a ServerError that also reads as unavailable.
	sock5 := t.TempDir() + "/503.sock"
	l5, err := net.Listen("unix", sock5)
	if err != nil {
		t.Fatal(err)
	}
	defer l5.Close()
	go http.Serve(l5, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		localapi.WriteError(w, http.StatusServiceUnavailable, "stopping", "going away")
	}))
	_, err = NewClient(sock5).Verify(context.Background(), []byte("a.b.c"))
	var se *ServerError
	if !errors.As(err, &se) || se.Status != 503 || se.Code != "stopping" || !isUnavailable(err) || errors.Is(err, ErrRateLimited) {
		t.Fatalf("503: %v", err)
	}
	if NewClient("").Socket() != config.DefaultVerifyd {
		t.Fatal("NewClient(\"\") does not use config.DefaultVerifyd")
	}
}
