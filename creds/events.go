package creds

import "github.com/dbproxy/dbproxy/events"

// RecordEvents makes every source record its credentials' lifecycle
// (issued, renewed, revoked, expired, lost) into l. Call it before Run.
func (b *Broker) RecordEvents(l *events.Log) {
	for _, s := range b.sources {
		s.ev = l
	}
}

// maxEventResult caps an event's result text, which the status page shows.
const maxEventResult = 300

// event records what happened to generation g (nil: none yet).
func (s *Source) event(kind events.Kind, g *Generation, reason, result string, conns int) {
	if s.ev == nil {
		return
	}
	if len(result) > maxEventResult { // a Vault error can be long; the logs have it whole
		result = result[:maxEventResult] + "…"
	}
	e := events.Event{Time: s.now(), Kind: kind, Backend: s.backend, Role: s.role, Reason: reason, Result: result, Connections: conns}
	if g != nil {
		e.Generation = g.N
	}
	s.ev.Record(e)
}

// recordRetired records how a superseded generation's lease ended: revoked
// by dbproxy (ok, or gone when Vault no longer had it) or expired before
// dbproxy could revoke it. why is the reason it was superseded.
func (s *Source) recordRetired(g *Generation, why, result string) {
	switch result {
	case "ok", "gone":
		s.event(events.Revoked, g, why, result, 0)
	case "expired":
		s.event(events.Expired, g, why, result, 0)
	}
}
