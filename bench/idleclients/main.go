// Command idleclients is a measuring tool, not product code: it opens N
// idle, authenticated PostgreSQL client connections to a proxy and holds
// them, so that scripts/bench.sh can report the proxy's memory per idle
// client (issue 9: at most 12 KiB RSS each).
//
// Each connection sends a StartupMessage (protocol 3.0, user and database)
// and waits for ReadyForQuery; only AuthenticationOk is accepted (dbproxy's
// sidecar listener and PgBouncer with auth_type=trust send it). When all N
// are ready it prints "ready N" on stdout and holds them until SIGINT
// or SIGTERM, then closes them.
//
//	idleclients -addr 127.0.0.1:6432 -n 5000 -user bench -database appdb_txn
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:6432", "proxy address")
	n := flag.Int("n", 5000, "connections to open")
	user := flag.String("user", "bench", "user name in the StartupMessage")
	database := flag.String("database", "appdb", "database in the StartupMessage")
	parallel := flag.Int("parallel", 32, "connections being opened at once")
	timeout := flag.Duration("timeout", 20*time.Second, "deadline for one connection's startup")
	flag.Parse()

	conns := make([]net.Conn, *n)
	startup := startupMessage(*user, *database)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	next := make(chan int)
	for w := 0; w < *parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := open(*addr, startup, *timeout)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("connection %d: %w", i+1, err)
				}
				conns[i] = c
				mu.Unlock()
			}
		}()
	}
	t0 := time.Now()
	for i := range conns {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		fmt.Fprintf(os.Stderr, "idleclients: %v\n", firstErr)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "idleclients: %d connections ready in %s\n", *n, time.Since(t0).Round(time.Millisecond))
	fmt.Printf("ready %d\n", *n)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	for _, c := range conns {
		c.Close()
	}
}

// startupMessage encodes a protocol 3.0 StartupMessage.
func startupMessage(user, database string) []byte {
	body := binary.BigEndian.AppendUint32(nil, 3<<16)
	for _, kv := range [][2]string{{"user", user}, {"database", database}, {"application_name", "idleclients"}} {
		body = append(append(append(append(body, kv[0]...), 0), kv[1]...), 0)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(4+len(body))), body...)
}

// open connects, sends startup and reads until ReadyForQuery.
func open(addr string, startup []byte, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(startup); err != nil {
		c.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(c, 512)
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			c.Close()
			return nil, fmt.Errorf("startup: %w", err)
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 || n > 1<<16 {
			c.Close()
			return nil, fmt.Errorf("message %q of %d bytes", hdr[0], n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			c.Close()
			return nil, fmt.Errorf("startup: %w", err)
		}
		switch {
		case hdr[0] == 'E':
			c.Close()
			return nil, fmt.Errorf("server error: %q", body)
		case hdr[0] == 'R' && (n < 4 || binary.BigEndian.Uint32(body) != 0):
			c.Close()
			return nil, errors.New("the server asks for a password; idleclients supports only AuthenticationOk")
		case hdr[0] == 'Z':
			c.SetDeadline(time.Time{})
			return c, nil
		}
	}
}
