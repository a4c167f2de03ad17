package postgres

import (
	"maps"
	"sync"
)

// maxGreetings bounds the cache: keys include client startup parameters
// such as application_name, which clients choose freely.
const maxGreetings = 1024

// greetingCache remembers the ParameterStatus values a server connection
// reported, so transaction-pool clients can be greeted without one.
type greetingCache struct {
	mu sync.Mutex
	m  map[string]map[string]string
}

func (c *greetingCache) get(key string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

func (c *greetingCache) put(key string, params map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]map[string]string{}
	}
	if _, ok := c.m[key]; !ok && len(c.m) >= maxGreetings {
		for k := range c.m { // evict one; map order is random
			delete(c.m, k)
			break
		}
	}
	c.m[key] = maps.Clone(params)
}
