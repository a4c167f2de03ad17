package postgres

import "testing"

// The relay's hot path: one request and its answer over loopback to the
// fake server. Target: 0 allocs/op in every mode.
func benchRelay(b *testing.B, mode string, setup, req []byte) {
	h := startRelay(b, mode)
	if setup != nil {
		h.roundTrip(b, setup)
	}
	h.roundTrip(b, req)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if st := h.roundTrip(b, req); st != 'I' {
			b.Fatalf("status %c", st)
		}
	}
}

func BenchmarkRelayPostgresSessionSimple(b *testing.B) { benchRelay(b, "session", nil, simpleQuery) }
func BenchmarkRelayPostgresSessionExtended(b *testing.B) {
	benchRelay(b, "session", nil, extendedTxn)
}
func BenchmarkRelayPostgresTxnSimple(b *testing.B)   { benchRelay(b, "transaction", nil, simpleQuery) }
func BenchmarkRelayPostgresTxnExtended(b *testing.B) { benchRelay(b, "transaction", nil, extendedTxn) }
func BenchmarkRelayPostgresTxnPrepared(b *testing.B) {
	benchRelay(b, "transaction", prepareStmt, preparedExec)
}
