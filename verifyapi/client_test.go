package verifyapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

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

// RefetchSlot sends {generation, urgent} and reads not_before; an answer
// without one is not verifyd's, and 409 is ErrWrongGeneration (no slot,
// and not "unavailable": the caller checks again and asks again).
func TestClientRefetchSlot(t *testing.T) {
	sock := t.TempDir() + "/slot.sock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	slot := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req RefetchSlotRequest
		if r.Method != http.MethodPost || r.URL.Path != PathRefetchSlot || json.NewDecoder(r.Body).Decode(&req) != nil {
			localapi.WriteError(w, http.StatusBadRequest, CodeBadRequest, "unexpected request")
			return
		}
		switch req.Generation {
		case 3:
			if !req.Urgent {
				localapi.WriteError(w, http.StatusBadRequest, CodeBadRequest, "urgent not sent")
				return
			}
			io.WriteString(w, `{"not_before":"2025-03-01T12:00:00.123456789Z"}`)
		case 4:
			io.WriteString(w, `{}`)
		default:
			localapi.WriteError(w, http.StatusConflict, CodeWrongGeneration, "refetch slot asked for key generation 5, but verifyd's is 3")
		}
	}))
	c := NewClient(sock)
	defer c.Close()
	ctx := context.Background()
	if at, err := c.RefetchSlot(ctx, RefetchSlotRequest{Generation: 3, Urgent: true}); err != nil || !at.Equal(slot) {
		t.Fatalf("RefetchSlot: %v, %v; want %v", at, err, slot)
	}
	if at, err := c.RefetchSlot(ctx, RefetchSlotRequest{Generation: 4}); !at.IsZero() || !isUnavailable(err) || !strings.Contains(err.Error(), "no not_before") {
		t.Fatalf("an answer without not_before: %v, %v", at, err)
	}
	at, err := c.RefetchSlot(ctx, RefetchSlotRequest{Generation: 5})
	if !at.IsZero() || !errors.Is(err, ErrWrongGeneration) || isUnavailable(err) || errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "verifyd's is 3") {
		t.Fatalf("409: %v, %v", at, err)
	}
}
