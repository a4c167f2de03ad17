package postgres

import "github.com/dbproxy/dbproxy/proxy/frontend"

func putGreeting(srv *Server, backend, role, poolKey string, params map[string]string) {
	srv.greetings.Put(frontend.GreetingKey(backend, role, poolKey), encodeGreeting(params))
}
