package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/dbproxy/dbproxy/admin/console"
	"github.com/dbproxy/dbproxy/config"
)

// processStarted is when this process started, for SHOW STATS averages.
var processStarted = time.Now()

// newConsole builds the SQL admin console over the same operations the
// admin API uses.
func newConsole(cfg *config.Config, st *stack, deps Deps, log *zap.Logger) *console.Console {
	backends := map[string]console.Backend{}
	for name, b := range cfg.Backends {
		mode := b.Pool.Mode
		if mode == "" {
			mode = "session"
		}
		backends[name] = console.Backend{Protocol: b.Protocol, Address: b.Address, PoolMode: mode}
	}
	admins := map[string]bool{}
	for name, id := range cfg.Identities {
		admins[name] = id.Admin
	}
	o := console.Options{
		Ops: st, Killer: st, Backends: backends, Config: configSettings(cfg, log), Version: version,
		Admin: func(identity string) bool { return admins[identity] }, Started: processStarted, Log: log,
	}
	if deps.Registry != nil { // a nil *Registry in the interface would not be nil
		o.Gatherer = deps.Registry
	}
	return console.New(o)
}

// configSettings flattens the configuration into SHOW CONFIG's key/value
// lines, by their YAML names. The configuration holds file paths, not
// secrets; a key that sounds like one is masked all the same.
func configSettings(cfg *config.Config, log *zap.Logger) []console.Setting {
	b, err := yaml.Marshal(cfg)
	var tree any
	if err == nil {
		err = yaml.Unmarshal(b, &tree)
	}
	if err != nil {
		log.Warn("SHOW CONFIG will be empty", zap.Error(err))
		return nil
	}
	var out []console.Setting
	flatten("", tree, &out)
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func flatten(prefix string, v any, out *[]console.Setting) {
	switch x := v.(type) {
	case map[string]any:
		for k, child := range x {
			key := k
			if prefix != "" {
				key = prefix + "." + k
			}
			flatten(key, child, out)
		}
	case []any:
		for i, child := range x {
			flatten(fmt.Sprintf("%s[%d]", prefix, i), child, out)
		}
	case nil:
	default:
		val := fmt.Sprint(x)
		last := prefix[strings.LastIndexAny(prefix, ".]")+1:]
		if strings.Contains(last, "password") || strings.Contains(last, "secret") && !strings.HasSuffix(last, "_file") || last == "token" {
			val = "********"
		}
		*out = append(*out, console.Setting{Key: prefix, Value: val})
	}
}
