package main

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// userSampler polls pg_roles every 200 ms for the users Vault created for
// one role (the PostgreSQL plugin names them v-DISPLAY-ROLE-RANDOM-TIME,
// ROLE cut to 8 characters). A user lives until its lease is revoked,
// normally many seconds; only one fetched by a rotation in the instant a
// process is stopped, and revoked by its shutdown, may live less than a
// poll and be missed.
type userSampler struct {
	mu     sync.Mutex
	seen   map[string]bool
	now    int
	max    int
	cancel context.CancelFunc
	done   chan struct{}
}

func (e *env) sampleUsers(ctx context.Context, role string) (*userSampler, error) {
	conn, err := pgx.Connect(ctx, e.pg.SuperDSN())
	if err != nil {
		return nil, err
	}
	pattern := "v-%-" + role[:min(8, len(role))] + "-%"
	sctx, cancel := context.WithCancel(ctx)
	s := &userSampler{seen: map[string]bool{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer conn.Close(context.Background())
		for {
			rows, err := conn.Query(sctx, "select rolname from pg_roles where rolname like $1", pattern)
			if err == nil {
				if names, err := pgx.CollectRows(rows, pgx.RowTo[string]); err == nil {
					s.record(names)
				}
			}
			select {
			case <-sctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return s, nil
}

func (s *userSampler) record(names []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range names {
		s.seen[n] = true
	}
	s.now = len(names)
	s.max = max(s.max, len(names))
}

// waitEmpty waits until no user of the role is left, or for at most d.
func (s *userSampler) waitEmpty(ctx context.Context, d time.Duration) {
	for deadline := time.Now().Add(d); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(time.Second) {
		s.mu.Lock()
		n := s.now
		s.mu.Unlock()
		if n == 0 {
			return
		}
	}
}

// stop ends the polling and returns the distinct users seen and the most
// seen at once.
func (s *userSampler) stop() (users, maxUsers int) {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen), s.max
}
