package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// dbproxyCLI runs an operator command of the built binary against p.

// TestOperatorRevoke: the dry run shows the sessions a revoke would cut and
// changes nothing; the revoke itself fetches a new credential, revokes the
// old lease in Vault (the database user is dropped) and closes the sessions
// still on it with a reason, while new sessions work on the new credential.
func TestOperatorRevoke(t *testing.T) {
	// Leases long enough that no rotation happens on its own.
	s := startLeaseStackTTL(t, "revoke-app", "", time.Minute, 10*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable connect_timeout=10", s.port)
	inTxn, idle := connect(t, dsn), connect(t, dsn)
	var oldUser string
	if err := idle.QueryRow(ctx, "select current_user").Scan(&oldUser); err != nil {
		t.Fatal(err)
	}
	if _, err := inTxn.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}

	// The status page shows the generation and the sessions by identity.
	resp, err := http.Get(s.proxy.admin + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"Sessions (2)", oldUser, "<td>app</td><td>appdb</td>", "idle 1, idle in transaction 1"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("status page lacks %q:\n%s", want, page)
		}
	}

	out, err := dbproxyCLI(t, s.proxy, "revoke", "appdb", "--dry-run")
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	t.Logf("dbproxy revoke appdb --dry-run:\n%s", out)
	flat := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"DRY RUN", oldUser, "app postgres revoke-app 2 1", "What dbproxy would do:", "(an operator revoked it)"} {
		if !strings.Contains(flat, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if l := s.proxy.leases(t); len(l) != 1 || l[0].Username != oldUser {
		t.Fatalf("the dry run changed the leases: %+v", l)
	}
	if err := idle.Ping(ctx); err != nil {
		t.Fatalf("the dry run cut a session: %v", err)
	}

	out, err = dbproxyCLI(t, s.proxy, "revoke", "appdb")
	if err != nil {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	t.Logf("dbproxy revoke appdb:\n%s", out)
	flat = strings.Join(strings.Fields(out), " ")
	// The idle session may move to the new credential before the cut
	// (session mode moves idle sessions at a rotation): 1 or 2 are cut.
	if !strings.Contains(flat, "Revoked the credentials of appdb") ||
		!strings.Contains(flat, oldUser+" 2 ok") && !strings.Contains(flat, oldUser+" 1 ok") {
		t.Errorf("revoke output:\n%s", out)
	}
	if slices.Contains(vaultRoles(t, "revoke-app"), oldUser) {
		t.Errorf("database user %s still exists after the revoke", oldUser)
	}
	if _, err := inTxn.Exec(ctx, "select 1"); sqlstate(err) != "57P01" || !strings.Contains(err.Error(), "an operator revoked it") {
		t.Errorf("session in a transaction: got %v, want 57P01 naming the operator revoke", err)
	}
	// An idle session either moved to the new credential (and works, as
	// another database user) or was cut with the reason.
	var user string
	if err := idle.QueryRow(ctx, "select current_user").Scan(&user); err == nil {
		if user == oldUser {
			t.Errorf("the idle session still runs as the revoked user %s", user)
		}
	} else if sqlstate(err) != "57P01" || !strings.Contains(err.Error(), "an operator revoked it") {
		t.Errorf("idle session: got %v, want it moved or 57P01 naming the operator revoke", err)
	}
	// The report counts what just happened and asks Vault for its version.
	revokeOut := out
	out, err = dbproxyCLI(t, s.proxy, "report")
	if err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	t.Logf("dbproxy report:\n%s", out)
	report := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"HASHICORP VAULT DYNAMIC SECRETS REPORT", "Vault Version: 1.", "Cluster Status: active",
		"database/creds/revoke-app (postgres): 2", "Total Active: 1", "initial 1, revoke 1", "Operator revokes / rotations: 1 / 0"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}

	var newUser string
	if err := connect(t, dsn).QueryRow(ctx, "select current_user").Scan(&newUser); err != nil {
		t.Fatal(err)
	}
	if newUser == oldUser || !strings.Contains(flat, newUser) {
		t.Errorf("new session runs as %s (old %s); revoke output:\n%s", newUser, oldUser, revokeOut)
	}
}

// TestOperatorRevokeMySQL: the same runbook on a MariaDB backend; the
// session on the revoked credential gets 1927 naming the operator revoke
// and the Vault-made user is dropped.
func TestOperatorRevokeMySQL(t *testing.T) {
	s := startMyLeaseStack(t, "revoke-my", time.Minute, 10*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	db := openMy(t, fmt.Sprintf("app@tcp(127.0.0.1:%d)/appdb?timeout=10s", s.port))
	db.SetMaxOpenConns(2)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	idle, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	var oldUser string
	if err := idle.QueryRowContext(ctx, "select 1").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	// In a transaction: it cannot move to the new credential.
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRowContext(ctx, "select substring_index(current_user(), '@', 1)").Scan(&oldUser); err != nil {
		t.Fatal(err)
	}

	out, err := dbproxyCLI(t, s.proxy, "revoke", "appdb", "--role", "revoke-my")
	if err != nil {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	if flat := strings.Join(strings.Fields(out), " "); !strings.Contains(flat, "app mysql revoke-my 2") || !strings.Contains(flat, oldUser+" 2 ok") && !strings.Contains(flat, oldUser+" 1 ok") {
		t.Errorf("revoke output:\n%s", out)
	}
	var one int
	err = conn.QueryRowContext(ctx, "select 1").Scan(&one)
	if myCode(err) != 1927 || !strings.Contains(err.Error(), "an operator revoked it") {
		t.Errorf("session in a transaction on the revoked credential: got %v, want 1927 naming the operator revoke", err)
	}
	// An idle session either moved to the new credential (and works, as
	// another database user) or was cut with the reason.
	var user string
	if err := idle.QueryRowContext(ctx, "select substring_index(current_user(), '@', 1)").Scan(&user); err == nil {
		if user == oldUser {
			t.Errorf("the idle session still runs as the revoked user %s", user)
		}
	} else if myCode(err) != 1927 || !strings.Contains(err.Error(), "an operator revoked it") {
		t.Errorf("idle session: got %v, want it moved or 1927 naming the operator revoke", err)
	}
	if slices.Contains(mysqlVaultUsers(t, "revoke-my"), oldUser) {
		t.Errorf("database user %s still exists after the revoke", oldUser)
	}
	newUser, err := myTransaction(fmt.Sprintf("app@tcp(127.0.0.1:%d)/appdb?timeout=10s", s.port), 1)
	if err != nil || newUser == oldUser {
		t.Errorf("new session: %q, %v (old user %s)", newUser, err, oldUser)
	}
}

// TestOperatorRevokePrefix: `revoke --prefix` with a dry run that lists
// the Vault leases under the prefix (dbproxy's and another holder's) and
// changes nothing; a prefix outside the backend's credential path is
// refused; the revoke fetches a new credential first, then revokes every
// lease under the prefix but the new one: the live session on the old
// credential is cut with the reason, the other holder's user is dropped,
// and a new session works.
func TestOperatorRevokePrefix(t *testing.T) {
	s := startLeaseStackTTL(t, "revoke-prefix", "", time.Minute, 10*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable connect_timeout=10", s.port)
	live := connect(t, dsn)
	if _, err := live.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	var oldUser string
	if err := live.QueryRow(ctx, "select current_user").Scan(&oldUser); err != nil {
		t.Fatal(err)
	}
	// Another holder of the same role: an application reading Vault itself.
	other, err := Vault.Client.Logical().ReadWithContext(ctx, Mount+"/creds/"+s.role)
	if err != nil {
		t.Fatal(err)
	}
	otherUser, _ := other.Data["username"].(string)
	prefix := Mount + "/creds/" + s.role

	out, err := dbproxyCLI(t, s.proxy, "revoke", "appdb", "--prefix", prefix, "--dry-run")
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	t.Logf("dbproxy revoke appdb --prefix %s --dry-run:\n%s", prefix, out)
	flat := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"DRY RUN", "VAULT LEASES UNDER " + prefix + ": 2", "dbproxy generation 1 (" + oldUser + ")",
		other.LeaseID + " not dbproxy", "app postgres " + s.role + " 1 1", "revoke the 1 other lease(s) under " + prefix} {
		if !strings.Contains(flat, want) {
			t.Errorf("dry run output lacks %q", want)
		}
	}
	if l := s.proxy.leases(t); len(l) != 1 || l[0].Username != oldUser || !slices.Contains(vaultRoles(t, s.role), otherUser) {
		t.Fatalf("the dry run changed something: leases %+v, roles %v", l, vaultRoles(t, s.role))
	}

	out, err = dbproxyCLI(t, s.proxy, "revoke", "appdb", "--prefix", Mount+"/creds/")
	if err == nil || !strings.Contains(out, "outside backend appdb's credential paths ("+prefix+")") {
		t.Errorf("a prefix wider than the role: %v\n%s", err, out)
	}

	out, err = dbproxyCLI(t, s.proxy, "revoke", "appdb", "--prefix", prefix)
	if err != nil {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	t.Logf("dbproxy revoke appdb --prefix %s:\n%s", prefix, out)
	if flat := strings.Join(strings.Fields(out), " "); !regexp.MustCompile(regexp.QuoteMeta(oldUser)+` [1-9][0-9]* ok`).MatchString(flat) || !strings.Contains(flat, other.LeaseID+" ok") {
		t.Errorf("revoke output lacks the old lease (1 connection closed) and the other holder's:\n%s", out)
	}
	if _, err := live.Exec(ctx, "select 1"); sqlstate(err) != "57P01" || !strings.Contains(err.Error(), "an operator revoked it") {
		t.Errorf("live session on the revoked credential: got %v, want 57P01 naming the operator revoke", err)
	}
	if roles := vaultRoles(t, s.role); slices.Contains(roles, oldUser) || slices.Contains(roles, otherUser) || len(roles) != 1 {
		t.Errorf("database users after the revoke: %v, want only the new one (not %s or %s)", roles, oldUser, otherUser)
	}
	var newUser string
	if err := connect(t, dsn).QueryRow(ctx, "select current_user").Scan(&newUser); err != nil || newUser == oldUser {
		t.Errorf("new session: user %q (old %s), %v", newUser, oldUser, err)
	}
}
