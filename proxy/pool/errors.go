package pool

import (
	"errors"
	"fmt"
	"time"
)

// ErrExhausted is returned when no connection frees up in time.
var ErrExhausted = errors.New("too many connections")

// ExhaustedError carries the limits for a client-facing message.
type ExhaustedError struct {
	Backend string
	Max     int
	Waited  time.Duration
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("too many connections for backend %s: all %d upstream connections stayed busy for %s; retry later or raise pool.max_connections",
		e.Backend, e.Max, e.Waited.Round(time.Millisecond))
}

// Is makes errors.Is(err, ErrExhausted) true.
func (e *ExhaustedError) Is(target error) bool { return target == ErrExhausted }

// PausedError is returned when the pool stayed paused for the whole
// checkout timeout.
type PausedError struct {
	Backend string
	Waited  time.Duration
}

func (e *PausedError) Error() string {
	return fmt.Sprintf("backend %s is paused by an operator (waited %s); retry later: POST /v1/backends/%s/resume on dbproxy's admin API ends the pause",
		e.Backend, e.Waited.Round(time.Millisecond), e.Backend)
}

// errSuperseded means the generation a checkout picked was rotated away
// before the dial; the checkout retries with the current one.
var errSuperseded = errors.New("credential generation superseded before use")
