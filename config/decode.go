package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// pos is a 1-based line and column in the configuration file.
type pos struct{ line, col int }

// source remembers where each setting was written, so that defaults can
// tell "absent" from "written as zero" and Validate can point at the line.
// Paths look like "backends.orders.pool.mode" and "listeners[1].tls".
type source struct {
	file string
	val  map[string]pos  // position of the value node
	key  map[string]pos  // position of the key (or of the "- " list item)
	null map[string]bool // written but empty (`key:` or `key: null`)
	bad  map[string]bool // could not be decoded; Validate stays quiet about them
}

// suppressed reports whether path or a setting enclosing it could not be
// decoded, so that validating its (zero) value would only repeat that.
func (s *source) suppressed(path string) bool {
	if s == nil {
		return false
	}
	for q := path; ; q = parent(q) {
		if s.bad[q] {
			return true
		}
		if q == "" {
			return false
		}
	}
}

func newSource(file string) *source {
	return &source{file: file, val: map[string]pos{}, key: map[string]pos{}, null: map[string]bool{}, bad: map[string]bool{}}
}

// decoder walks a yaml.Node tree into a Go value, collecting every problem
// instead of stopping at the first one.
type decoder struct {
	src   *source
	probs Problems
}

// fail reports a problem with the setting at path, written at n.
func (d *decoder) fail(path string, n *yaml.Node, format string, args ...any) {
	d.src.bad[path] = true
	d.errorf(n, format, args...)
}

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.probs = append(d.probs, Problem{File: d.src.file, Line: n.Line, Col: n.Column, Msg: fmt.Sprintf(format, args...)})
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// parse decodes data (the contents of file) into c, recording positions.
func parse(file string, data []byte, c *Config) (*source, Problems) {
	d := &decoder{src: newSource(file)}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return d.src, Problems{{File: file, Line: 1, Col: 1, Msg: "the file is empty; start from examples/dbproxy.yaml"}}
		}
		return d.src, Problems{syntaxProblem(file, err)}
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		d.errorf(&extra, "a second YAML document starts here; put the whole configuration in one document (remove the extra ---)")
	case !errors.Is(err, io.EOF):
		d.probs = append(d.probs, syntaxProblem(file, err))
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return d.src, Problems{{File: file, Line: 1, Col: 1, Msg: "the file is empty; start from examples/dbproxy.yaml"}}
		}
		root = root.Content[0]
	}
	if resolve(root).Kind == yaml.ScalarNode && resolve(root).Tag == "!!null" {
		return d.src, Problems{{File: file, Line: 1, Col: 1, Msg: "the file is empty; start from examples/dbproxy.yaml"}}
	}
	d.decode(root, reflect.ValueOf(c).Elem(), "")
	return d.src, d.probs
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxProblem turns a yaml.v3 parser error into a Problem. The parser
// reports a line but no column, so the column is 1.
func syntaxProblem(file string, err error) Problem {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return Problem{File: file, Line: line, Col: 1, Msg: "YAML syntax error: " + m[2]}
	}
	return Problem{File: file, Line: 1, Col: 1, Msg: "YAML syntax error: " + strings.TrimPrefix(msg, "yaml: ")}
}

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping (key: value lines)"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// decode stores n into v. path names v for messages and positions.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	n = resolve(n)
	d.src.val[path] = pos{n.Line, n.Column}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		d.src.null[path] = true
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		if n.Kind != yaml.ScalarNode {
			d.fail(path, n, "%s: want a single value, got %s", path, describe(n))
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(path, n, "%s: %v", path, err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		nv := reflect.New(v.Type().Elem())
		d.decode(n, nv.Elem(), path)
		v.Set(nv)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(path, n, "%s: want a list (lines starting with \"- \"), got %s", path, describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.src.key[p] = pos{item.Line, item.Column}
			d.decode(item, s.Index(i), p)
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(path, n, "%s: want a single value, got %s", path, describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int:
		var i int
		if n.Kind != yaml.ScalarNode || n.Decode(&i) != nil {
			d.fail(path, n, "%s: want a whole number, got %s", path, describe(n))
			return
		}
		v.SetInt(int64(i))
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
			d.fail(path, n, "%s: want true or false, got %s", path, describe(n))
			return
		}
		v.SetBool(b)
	default:
		d.fail(path, n, "%s: cannot decode into %s (a bug in dbproxy)", path, v.Type())
	}
}

// pair is one key: value of a mapping, with merge keys (<<) expanded.
type pair struct{ k, v *yaml.Node }

// pairs lists a mapping's entries, expanding YAML merge keys; explicit
// keys win over merged ones. Duplicate explicit keys are reported.
func (d *decoder) pairs(n *yaml.Node, path string) []pair {
	var own, merged []pair
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Tag == "!!merge" || (k.Value == "<<" && k.Style == 0) {
			for _, m := range mergeSources(v) {
				if m.Kind != yaml.MappingNode {
					d.errorf(k, "%s: a merge key (<<) needs a mapping or an alias of one", path)
					continue
				}
				merged = append(merged, d.pairs(m, path)...)
			}
			continue
		}
		if prev, ok := seen[k.Value]; ok {
			d.errorf(k, "%s: key %q is already set at line %d; remove one of them", path, k.Value, prev.Line)
			continue
		}
		seen[k.Value] = k
		own = append(own, pair{k, v})
	}
	out := own
	for _, p := range merged {
		if _, ok := seen[p.k.Value]; !ok {
			seen[p.k.Value] = p.k
			out = append(out, p)
		}
	}
	return out
}

func mergeSources(v *yaml.Node) []*yaml.Node {
	v = resolve(v)
	if v.Kind == yaml.SequenceNode {
		var out []*yaml.Node
		for _, c := range v.Content {
			out = append(out, resolve(c))
		}
		return out
	}
	return []*yaml.Node{v}
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(path, n, "%s: want a mapping of names to settings, got %s", path, describe(n))
		return
	}
	m := reflect.MakeMap(v.Type())
	for _, p := range d.pairs(n, path) {
		if p.k.Kind != yaml.ScalarNode {
			d.errorf(p.k, "%s: a name must be a plain word, got %s", path, describe(p.k))
			continue
		}
		child := join(path, p.k.Value)
		d.src.key[child] = pos{p.k.Line, p.k.Column}
		ev := reflect.New(v.Type().Elem()).Elem()
		d.decode(p.v, ev, child)
		m.SetMapIndex(reflect.ValueOf(p.k.Value).Convert(v.Type().Key()), ev)
	}
	v.Set(m)
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		what := "settings"
		if path != "" {
			what = path
		}
		d.fail(path, n, "%s: want a mapping (key: value lines), got %s", what, describe(n))
		return
	}
	fields := yamlFields(v.Type())
	for _, p := range d.pairs(n, path) {
		idx, ok := fields[p.k.Value]
		if !ok {
			msg, meant := unknownKey(p.k.Value, path, fields)
			d.fail(join(path, p.k.Value), p.k, "%s", msg)
			if meant != "" {
				d.src.bad[join(path, meant)] = true
			}
			continue
		}
		child := join(path, p.k.Value)
		d.src.key[child] = pos{p.k.Line, p.k.Column}
		d.decode(p.v, v.Field(idx), child)
	}
}

// yamlFields maps yaml key names to field indexes of struct type t.
func yamlFields(t reflect.Type) map[string]int {
	out := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = i
	}
	return out
}

// secretKeys are keys people write when they try to put a secret inline.
var secretKeys = map[string]bool{
	"password": true, "passwd": true, "pass": true, "pwd": true,
	"token": true, "secret": true, "secret_id": true, "role_id": true,
	"jwt": true, "api_key": true, "apikey": true, "key": true, "private_key": true,
	"client_secret": true, "vault_token": true, "credentials": true, "username": true, "user": true,
}

// unknownKey explains an unknown key and suggests the closest valid one,
// which it also returns ("" when it has no suggestion).
func unknownKey(key, path string, fields map[string]int) (msg, meant string) {
	where := path
	if where == "" {
		where = "the top level"
	}
	msg = fmt.Sprintf("unknown key %q in %s", key, where)
	norm := normalize(key)
	if secretKeys[norm] {
		if _, ok := fields[norm+"_file"]; ok {
			if path == "vault.auth" {
				return fmt.Sprintf("%s: did you mean %q? secrets are read from files: use token_file / secret_id_file (role_id_file, jwt_file), never the secret itself", msg, norm+"_file"), norm + "_file"
			}
			return fmt.Sprintf("%s: did you mean %q? secrets are read from files: give the path of the file that holds it", msg, norm+"_file"), norm + "_file"
		}
		switch norm {
		case "user", "username", "password", "passwd", "pass", "pwd", "credentials":
			return msg + ": database credentials are never written in the config; dbproxy fetches them from Vault (set the backend's vault_role or a grant's role). secrets are read from files: use token_file / secret_id_file", ""
		}
		return msg + ": secrets are read from files: use token_file / secret_id_file (under vault.auth), never the secret itself", ""
	}
	if best := closest(key, fields); best != "" {
		return fmt.Sprintf("%s: did you mean %q?", msg, best), best
	}
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	return fmt.Sprintf("%s; valid keys are: %s", msg, strings.Join(names, ", ")), ""
}

func normalize(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	return strings.ReplaceAll(s, "-", "_")
}

// closest returns the known key nearest to key, or "" when none is close.
func closest(key string, fields map[string]int) string {
	squash := func(s string) string { return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s)) }
	best, bestD := "", 1<<30
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if squash(k) == squash(key) {
			return k
		}
		dist := levenshtein(key, k)
		if dist < bestD {
			best, bestD = k, dist
		}
	}
	limit := max(1, min(3, len(key)/3))
	if bestD <= limit {
		return best
	}
	return ""
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
