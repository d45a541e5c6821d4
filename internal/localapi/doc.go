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
// The transport is HTTP/1.1 (net/http) for now; only Do and the server
// construction in this package know it.
package localapi
