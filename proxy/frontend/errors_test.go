package frontend

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

func TestClassify(t *testing.T) {
	notGranted := &identity.Error{Reason: identity.ReasonNotGranted}
	unknown := &identity.Error{Reason: identity.ReasonUnknownIdentity}
	exhausted := &pool.ExhaustedError{Backend: "b", Max: 2, Waited: time.Second}
	paused := &pool.PausedError{Backend: "b"}
	dial := errors.New("dial tcp: connection refused")
	for _, tc := range []struct {
		err  error
		want Class
		msg  string
	}{
		{fmt.Errorf("login: %w", notGranted), NotGranted, notGranted.Error()},
		{unknown, Denied, unknown.Error()},
		{fmt.Errorf("checkout: %w", exhausted), Exhausted, exhausted.Error()},
		{paused, Paused, paused.Error()},
		{fmt.Errorf("x: %w", &creds.ErrNoCredential{}), NoCredential, (&creds.ErrNoCredential{}).Error()},
		{dial, Unreachable, dial.Error()},
	} {
		got, msg := Classify(tc.err)
		if got != tc.want || msg != tc.msg {
			t.Errorf("Classify(%v) = %d %q, want %d %q", tc.err, got, msg, tc.want, tc.msg)
		}
	}
}
