package frontend

import "sync"

// maxGreetings bounds a Greetings: keys include what clients choose
// freely (application_name, program_name).
const maxGreetings = 1024

// Greetings remembers, per backend, role and pool key, what the last
// server login reported (PostgreSQL's encoded AuthenticationOk and
// ParameterStatus messages, MySQL's status flags), so transaction-pool
// clients can be greeted without waiting for a free server connection.
// Values must not be changed after Put. The zero value is ready to use.
type Greetings[V any] struct {
	mu sync.Mutex
	m  map[string]V
}

// GreetingKey is the key of a pool's greeting.
func GreetingKey(backend, role, poolKey string) string {
	return backend + "\x00" + role + "\x00" + poolKey
}

// Get returns the greeting stored under key.
func (g *Greetings[V]) Get(key string) (V, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	v, ok := g.m[key]
	return v, ok
}

// Clear forgets every greeting: a reload may have moved a backend to
// another server, whose greeting the next login stores.
func (g *Greetings[V]) Clear() {
	g.mu.Lock()
	g.m = nil
	g.mu.Unlock()
}

// Put stores v under key, dropping another key at random when full.
func (g *Greetings[V]) Put(key string, v V) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = map[string]V{}
	}
	if _, ok := g.m[key]; !ok && len(g.m) >= maxGreetings {
		for k := range g.m { // map order is random
			delete(g.m, k)
			break
		}
	}
	g.m[key] = v
}
