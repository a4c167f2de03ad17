package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The status page at / is for people: pools, credential generations on a
// timeline and sessions grouped by identity and backend, rendered on the
// server from the same Operations the /v1 API uses, with no script and
// nothing from a CDN. It refreshes itself. When a token is configured the
// page needs it too (typed once, kept in a SameSite=Strict cookie), and only
// then does it offer operator buttons: without a token anyone who can
// reach the listener could press them, and a page cannot prove who it is
// talking to.

//go:embed status.html
var statusHTML string

var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago":   func(t time.Time) string { return time.Since(t).Round(time.Second).String() },
	"until": untilText,
	"why":   reasonText,
}).Parse(statusHTML))

const cookieName = "dbproxy_admin"

type statusPool struct {
	Backend, Role     string
	Open, Idle, Max   int
	Paused            bool
	Busy, BusyPercent int
}

type statusLease struct {
	Backend     string    `json:"backend"`
	Role        string    `json:"role"`
	Generation  uint64    `json:"generation"`
	Username    string    `json:"username"`
	State       string    `json:"state"`
	Reason      string    `json:"reason"`
	IssuedAt    time.Time `json:"issued_at"`
	LeaseEnd    time.Time `json:"lease_end"`
	HardEnd     time.Time `json:"hard_end"`
	Deadline    time.Time `json:"drain_deadline"`
	Connections int       `json:"connections"`
	// Positions on the timeline of its (backend, role), in percent.
	Left, Width, LeaseEndAt, DeadlineAt float64
}

type statusSession struct {
	Protocol string `json:"protocol"`
	Identity string `json:"identity"`
	Backend  string `json:"backend"`
	Role     string `json:"role"`
	State    string `json:"state"`
}

type sessionGroup struct {
	Identity, Backend, Protocol, Role string
	Count                             int
	States                            string
}

type timeline struct {
	Backend, Role string
	From, To      time.Time
	NowAt         float64
	Leases        []statusLease
}

type statusPage struct {
	Now       time.Time
	Ready     bool
	Failing   []failure
	Pools     []statusPool
	Timelines []timeline
	Sessions  []sessionGroup
	Total     int
	Events    []statusEvent
	HasEvents bool // ops keeps an event log
	Buttons   bool
	Message   string
}

// MountStatus serves the status page at / and its operator actions.
func (s *Server) MountStatus(ops Operations) {
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Token != "" && !s.cookieOK(r) {
			s.renderLogin(w, "")
			return
		}
		p := buildStatus(ops, s.failing())
		p.Buttons = s.opts.Token != ""
		p.Message = r.URL.Query().Get("msg")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Frame-Options", "DENY")
		_ = statusTmpl.ExecuteTemplate(w, "page", p)
	})
	s.mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Token == "" || !sameOrigin(r) {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		got := sha256.Sum256([]byte(r.PostFormValue("token")))
		if subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) != 1 {
			s.renderLogin(w, "wrong token")
			return
		}
		http.SetCookie(w, &http.Cookie{Name: cookieName, Value: hex.EncodeToString(s.cookieValue()), Path: "/",
			HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: 8 * 3600})
		http.Redirect(w, r, "/", http.StatusSeeOther)
	})
	s.mux.HandleFunc("POST /ui/backends/{name}/{verb}", func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Token == "" || !s.cookieOK(r) || !sameOrigin(r) {
			http.Error(w, "forbidden: operator actions need the admin token and a same-origin request", http.StatusForbidden)
			return
		}
		name, verb := r.PathValue("name"), r.PathValue("verb")
		msg := verb + " " + name + ": done"
		if verb == "rotate" {
			// Over the issuance cap the error says when to try again.
			if err := ops.Rotate(name); err != nil {
				msg = verb + " " + name + ": " + err.Error()
			}
		} else if do := map[string]func(string) bool{"pause": ops.Pause, "resume": ops.Resume, "drain": ops.Drain}[verb]; do == nil || !do(name) {
			msg = verb + " " + name + ": unknown backend or action"
		}
		http.Redirect(w, r, "/?msg="+url.QueryEscape(msg), http.StatusSeeOther)
	})
}

func (s *Server) renderLogin(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Frame-Options", "DENY")
	_ = statusTmpl.ExecuteTemplate(w, "login", msg)
}

// cookieValue is what the login cookie holds: a hash of the token's hash,
// so the cookie is not the token itself.
func (s *Server) cookieValue() []byte {
	h := sha256.Sum256(append([]byte("dbproxy-status-page:"), s.tokenHash[:]...))
	return h[:]
}

func (s *Server) cookieOK(r *http.Request) bool {
	c, err := r.Cookie(cookieName)
	if err != nil {
		return false
	}
	got, err := hex.DecodeString(c.Value)
	return err == nil && subtle.ConstantTimeCompare(got, s.cookieValue()) == 1
}

// sameOrigin refuses cross-site form posts: browsers send Origin (and
// Sec-Fetch-Site) with every POST.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return r.Header.Get("Sec-Fetch-Site") != "" // a browser that says where it comes from
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// decode turns an Operations answer into the page's own types.
func decode[T any](v any) []T {
	var out []T
	b, err := json.Marshal(v)
	if err == nil {
		_ = json.Unmarshal(b, &out)
	}
	return out
}

func buildStatus(ops Operations, failing []failure) statusPage {
	p := statusPage{Now: time.Now(), Failing: failing, Ready: len(failing) == 0}
	for _, sp := range decode[struct {
		Backend string `json:"backend"`
		Role    string `json:"role"`
		Open    int    `json:"open"`
		Idle    int    `json:"idle"`
		Max     int    `json:"max"`
		Paused  bool   `json:"paused"`
	}](ops.Pools()) {
		pl := statusPool{Backend: sp.Backend, Role: sp.Role, Open: sp.Open, Idle: sp.Idle, Max: sp.Max, Paused: sp.Paused, Busy: sp.Open - sp.Idle}
		if sp.Max > 0 {
			pl.BusyPercent = 100 * pl.Busy / sp.Max
		}
		p.Pools = append(p.Pools, pl)
	}
	sort.Slice(p.Pools, func(i, j int) bool { return p.Pools[i].Backend+p.Pools[i].Role < p.Pools[j].Backend+p.Pools[j].Role })
	p.Timelines = timelines(decode[statusLease](ops.Leases()), p.Now)
	p.Sessions, p.Total = groupSessions(decode[statusSession](ops.Sessions()))
	_, p.HasEvents = ops.(EventLister)
	p.Events = pageEvents(ops)
	return p
}

// timelines puts each (backend, role)'s generations on one time axis, from
// the oldest issue to the furthest end, so overlap during a drain shows.
func timelines(leases []statusLease, now time.Time) []timeline {
	var out []timeline
	idx := map[string]int{}
	for _, l := range leases {
		k := l.Backend + "\x00" + l.Role
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, timeline{Backend: l.Backend, Role: l.Role, From: l.IssuedAt, To: now})
		}
		t := &out[i]
		t.Leases = append(t.Leases, l)
		if l.IssuedAt.Before(t.From) {
			t.From = l.IssuedAt
		}
		for _, e := range []time.Time{l.LeaseEnd, l.HardEnd, l.Deadline} {
			if e.After(t.To) {
				t.To = e
			}
		}
	}
	for i := range out {
		t := &out[i]
		span := t.To.Sub(t.From)
		at := func(x time.Time) float64 {
			if span <= 0 || x.IsZero() {
				return 0
			}
			return 100 * float64(x.Sub(t.From)) / float64(span)
		}
		t.NowAt = at(now)
		for j := range t.Leases {
			l := &t.Leases[j]
			end := l.HardEnd
			if end.IsZero() {
				end = l.LeaseEnd
			}
			l.Left, l.Width = at(l.IssuedAt), max(at(end)-at(l.IssuedAt), 0.5)
			l.LeaseEndAt, l.DeadlineAt = at(l.LeaseEnd), at(l.Deadline)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Backend+out[i].Role < out[j].Backend+out[j].Role })
	return out
}

func groupSessions(ss []statusSession) ([]sessionGroup, int) {
	type key struct{ id, backend, protocol, role string }
	counts := map[key]map[string]int{}
	for _, s := range ss {
		k := key{s.Identity, s.Backend, s.Protocol, s.Role}
		if counts[k] == nil {
			counts[k] = map[string]int{}
		}
		counts[k][s.State]++
	}
	var out []sessionGroup
	for k, states := range counts {
		g := sessionGroup{Identity: k.id, Backend: k.backend, Protocol: k.protocol, Role: k.role}
		var parts []string
		for st, n := range states {
			g.Count += n
			parts = append(parts, st+" "+strconv.Itoa(n))
		}
		sort.Strings(parts)
		g.States = strings.Join(parts, ", ")
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Identity != b.Identity {
			return a.Identity < b.Identity
		}
		return a.Backend+a.Role < b.Backend+b.Role
	})
	return out, len(ss)
}

func untilText(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Until(t).Round(time.Second)
	if d < 0 {
		return (-d).String() + " ago"
	}
	return "in " + d.String()
}
