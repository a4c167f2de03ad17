package postgres

// answerLocally answers, without a server connection, a message that
// needs none between transactions: DEALLOCATE of one of the client's own
// statements (the server statement may be shared and stays).
func (t *txnSession) answerLocally(typ byte, size int) (bool, error) {
	s := t.s
	if !s.txnMode || typ != 'Q' || 5+size > s.cbr.Size() {
		return false, nil // a query larger than the buffer is no DEALLOCATE
	}
	f, err := s.cbr.Peek(5 + size)
	if err != nil {
		return false, err
	}
	q := firstCString(f[5:])
	if t.aborted && rollbackRE.Match(q) {
		// The transaction lost with its connection (lost.go) ends here,
		// with no server connection needed.
		t.aborted = false
		_, _ = s.cbr.Discard(5 + size)
		s.bytesIn.Add(int64(5 + size))
		s.txStatus.Store('I')
		_, err = s.cbw.Write(rollbackAnswer)
		return true, err
	}
	name, ok := deallocateTarget(q)
	if !ok {
		return false, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, mine := t.stmts[name]; !mine {
		return false, nil
	}
	t.forget(name)
	_, _ = s.cbr.Discard(5 + size)
	s.bytesIn.Add(int64(5 + size))
	_, err = s.cbw.Write(s.patchStatus(deallocateAnswer))
	return true, err
}
