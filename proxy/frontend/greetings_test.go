package frontend

import (
	"fmt"
	"testing"
)

func TestGreetingsBounded(t *testing.T) {
	var g Greetings[int]
	if _, ok := g.Get("a"); ok {
		t.Fatal("empty Greetings has a value")
	}
	for i := range maxGreetings + 10 {
		g.Put(fmt.Sprint(i), i)
	}
	if len(g.m) != maxGreetings {
		t.Fatalf("%d greetings kept, want %d", len(g.m), maxGreetings)
	}
	g.Put("x", 7)
	if v, ok := g.Get("x"); !ok || v != 7 {
		t.Fatalf("Get(x) = %d %v", v, ok)
	}
	g.Clear()
	if _, ok := g.Get("x"); ok {
		t.Fatal("a greeting outlived Clear")
	}
}
