package postgres

import (
	"sync"
	"testing"
)

func TestCancelKeysIssueLookupForget(t *testing.T) {
	k := newCancelKeys()
	s1, s2 := &session{}, &session{}
	pid1, sec1 := k.issue(s1)
	pid2, sec2 := k.issue(s2)
	if pid1 == pid2 {
		t.Fatalf("two sessions got pid %d", pid1)
	}
	if got := k.lookup(pid1, sec1[:]); got != s1 {
		t.Fatalf("lookup(pid1) = %p, want %p", got, s1)
	}
	if got := k.lookup(pid2, sec2[:]); got != s2 {
		t.Fatalf("lookup(pid2) = %p, want %p", got, s2)
	}
	// A copy of the secret works as well as the original slice.
	if got := k.lookup(pid1, append([]byte(nil), sec1[:]...)); got != s1 {
		t.Fatal("lookup with a copied secret failed")
	}

	k.forget(pid1)
	if got := k.lookup(pid1, sec1[:]); got != nil {
		t.Fatal("forgotten key still found")
	}
	if got := k.lookup(pid2, sec2[:]); got != s2 {
		t.Fatal("forget removed another session's key")
	}
	k.forget(pid1) // twice is harmless
	k.forget(12345)
}

func TestCancelKeysWrongSecret(t *testing.T) {
	k := newCancelKeys()
	s := &session{}
	pid, sec := k.issue(s)
	other := sec
	other[3] ^= 1
	for name, secret := range map[string][]byte{
		"one bit off":   other[:],
		"all zero":      {0, 0, 0, 0},
		"nil":           nil,
		"empty":         {},
		"too short":     sec[:3],
		"too long":      append(append([]byte{}, sec[:]...), 0),
		"3.2-style key": append(append([]byte{}, sec[:]...), make([]byte, 28)...),
	} {
		if got := k.lookup(pid, secret); got != nil {
			t.Errorf("%s: lookup = %p, want nil", name, got)
		}
	}
	// Failed attempts do not disturb the entry.
	if got := k.lookup(pid, sec[:]); got != s {
		t.Fatal("valid key not found after failed attempts")
	}
}

func TestCancelKeysUnknownPID(t *testing.T) {
	k := newCancelKeys()
	if got := k.lookup(0, []byte{0, 0, 0, 0}); got != nil {
		t.Fatal("empty table: pid 0 found")
	}
	pid, sec := k.issue(&session{})
	for _, p := range []uint32{0, pid + 1, pid ^ 0x80000000, 0xffffffff} {
		if p == pid {
			continue
		}
		if got := k.lookup(p, sec[:]); got != nil {
			t.Errorf("pid %d with a valid secret of another pid: found", p)
		}
	}
}

func TestCancelKeysUniqueNonZeroPIDs(t *testing.T) {
	k := newCancelKeys()
	const n = 20000
	pids := make(map[uint32]bool, n)
	secrets := make(map[[4]byte]int, n)
	for range n {
		pid, sec := k.issue(&session{})
		if pid == 0 {
			t.Fatal("pid 0 issued")
		}
		if pid&0x80000000 != 0 {
			// PostgreSQL's pid is a positive int32; some clients read it signed.
			t.Fatalf("pid %d does not fit a positive int32", pid)
		}
		if pids[pid] {
			t.Fatalf("pid %d issued twice", pid)
		}
		pids[pid] = true
		secrets[sec]++
	}
	if len(k.byID) != n {
		t.Fatalf("%d entries, want %d", len(k.byID), n)
	}
	// Secrets are random: 20000 draws from 2^32 collide rarely.
	if len(secrets) < n-10 {
		t.Fatalf("only %d distinct secrets in %d", len(secrets), n)
	}
}

func TestCancelKeysConcurrent(t *testing.T) {
	k := newCancelKeys()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				s := &session{}
				pid, sec := k.issue(s)
				if k.lookup(pid, sec[:]) != s {
					t.Error("lookup of a just-issued key failed")
					return
				}
				k.forget(pid)
				if k.lookup(pid, sec[:]) == s {
					// Another goroutine may have been issued the same pid
					// since, but never for this session.
					t.Error("forgotten key found")
					return
				}
			}
		})
	}
	wg.Wait()
	if len(k.byID) != 0 {
		t.Fatalf("%d entries left", len(k.byID))
	}
}
