// Package harness starts real PostgreSQL 15, MariaDB 10.11 and Vault dev
// servers on random loopback ports in temporary directories and configures
// Vault's database secrets engine against them, for the integration tests.
//
// It has one job: give a test (or TestMain; no *testing.T is needed) running
// servers and the credentials to reach them, and take them down again. Every
// server runs in its own process group, is killed with its children on Stop,
// and gets a parent-death signal so it does not outlive a crashed test binary.
// Readiness is checked by logging in; failures carry the tail of the server log.
//
// Running as root works: PostgreSQL, which refuses to run as root, is run as
// the "postgres" system user (or "nobody") with its directory chowned to it,
// and MariaDB is run with --user=root.
package harness
