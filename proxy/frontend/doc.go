// Package frontend holds what dbproxy's PostgreSQL and MySQL front ends do
// the same way: the accept loop, the registry of open sessions, Shutdown,
// the reasons a session is stopped from outside, the session description
// the admin API lists, the client metrics (one set, labelled by
// protocol), the greeting cache of transaction pools and the classes of
// errors that each protocol turns into its own codes. A protocol package
// plugs in its handshake and relay as the handler of an accepted
// connection and keeps only what is its own.
//
// Dependencies point one way: proxy/postgres and proxy/mysql import this
// package; it imports proxy/pool, creds and identity only to classify
// their errors, and nothing that speaks a wire protocol.
package frontend
