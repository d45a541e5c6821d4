// Package localapi is what tokend's two Unix-socket services share: the
// agent's control API (package api, served by package agent) and verifyd's
// key-verification API (package verifyapi, served by package verifyd).
//
// Server side: [NewListener] reads each connection's peer credentials once
// (SO_PEERCRED) and can bound the connections per uid; [PeerOf] gives a
// handler its peer. [Mux] routes by method and exact path and answers what
// it cannot route with the error envelope. [WriteJSON], [WriteError],
// [ReadBody] and [Decode] are the JSON helpers.
//
// On the wire every answer is JSON; every error answer is a non-2xx status
// with the body {"code": "...", "message": "..."} ([Error]).
//
// Client side: [Client.Do] is the one path a request takes: dial the socket,
// send, and turn an error answer back into an [*Error]. Each service's typed
// client builds on it and rebuilds its own typed errors.
//
// The transport is HTTP/1.1, so that clients and servers of earlier
// releases keep talking to today's. Requests may carry secrets (a token
// sent to verifyd), so they are never buffered by net/http: [Client.Do]
// writes each request whole from one buffer it zeroes, and [Serve], which
// verifyd runs, reads requests and writes answers itself with buffers it
// zeroes before it answers (see wire.go for the HTTP it reads). Answers
// carry no secret: the client reads them with http.ReadResponse, and the
// agent's control API, whose requests carry none either, is served by
// net/http ([NewServer]).
package localapi
