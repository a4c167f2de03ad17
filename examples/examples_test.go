// Package examples holds deployment examples (Kubernetes, systemd, Grafana,
// an annotated configuration); its tests keep them loadable and consistent
// with what dbproxy accepts, so a copied example works.
package examples

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/dbproxy/dbproxy/config"
)

// manifests decodes every document of every YAML file in examples/kubernetes.
func manifests(t *testing.T) map[string][]map[string]any {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	out := map[string][]map[string]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc map[string]any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if doc["apiVersion"] == nil || doc["kind"] == nil {
				t.Errorf("%s: a document without apiVersion or kind", f)
			}
			out[doc["kind"].(string)] = append(out[doc["kind"].(string)], doc)
		}
	}
	return out
}

// dig follows keys (string) and indexes (int) through decoded YAML.
func dig(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %q: not a mapping (path %v)", k, path)
			}
			v = m[k]
		case int:
			s, ok := v.([]any)
			if !ok || k >= len(s) {
				t.Fatalf("at [%d]: not a long enough list (path %v)", k, path)
			}
			v = s[k]
		}
	}
	return v
}

func TestKubernetesSidecar(t *testing.T) {
	m := manifests(t)
	for _, kind := range []string{"Deployment", "ConfigMap", "ServiceAccount", "Kustomization"} {
		if len(m[kind]) != 1 {
			t.Fatalf("want one %s, have %d", kind, len(m[kind]))
		}
	}
	spec := dig(t, m["Deployment"][0], "spec", "template", "spec")
	side := dig(t, spec, "initContainers", 0).(map[string]any)
	if side["name"] != "dbproxy" || side["restartPolicy"] != "Always" {
		t.Errorf("first init container %v/%v, want dbproxy with restartPolicy Always (native sidecar)", side["name"], side["restartPolicy"])
	}
	for probe, path := range map[string]string{"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if got := dig(t, side, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %v, want %s", probe, got, path)
		}
	}
	pre := dig(t, side, "lifecycle", "preStop", "exec", "command").([]any)
	if pre[0] != "/usr/local/bin/dbproxy" || pre[1] != "drain" {
		t.Errorf("preStop %v, want dbproxy drain", pre)
	}
	var projected map[string]any
	for _, v := range dig(t, spec, "volumes").([]any) {
		if p, ok := v.(map[string]any)["projected"]; ok {
			projected = dig(t, p, "sources", 0, "serviceAccountToken").(map[string]any)
		}
	}
	if projected == nil || projected["audience"] != "vault" {
		t.Errorf("no projected service-account token with audience vault: %v", projected)
	}
	if dig(t, m["ServiceAccount"][0], "automountServiceAccountToken") != false {
		t.Error("the service account mounts its default token; only the projected one is needed")
	}

	// The embedded configuration loads, with its files placed in a temp dir.
	text := dig(t, m["ConfigMap"][0], "data", "dbproxy.yaml").(string)
	if cfg := loadWithFiles(t, text, "/etc/dbproxy/", "/var/run/secrets/vault/"); cfg.Vault.Auth.Method != "kubernetes" {
		t.Errorf("vault auth %q, want kubernetes", cfg.Vault.Auth.Method)
	}
	// jwt_file is where the projected token is mounted.
	var raw struct {
		Vault struct {
			Auth struct {
				JWTFile string `yaml:"jwt_file"`
			}
		}
	}
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		t.Fatal(err)
	}
	mounted := ""
	for _, v := range dig(t, side, "volumeMounts").([]any) {
		if v.(map[string]any)["name"] == "vault-token" {
			mounted = v.(map[string]any)["mountPath"].(string) + "/" + projected["path"].(string)
		}
	}
	if raw.Vault.Auth.JWTFile != mounted {
		t.Errorf("jwt_file %q, but the projected token is mounted at %q", raw.Vault.Auth.JWTFile, mounted)
	}
}

// loadWithFiles rewrites the path prefixes into a temp dir, creates every
// file the configuration names there, and loads it.
func loadWithFiles(t *testing.T, text string, prefixes ...string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	for _, p := range prefixes {
		text = strings.ReplaceAll(text, p, filepath.Join(dir, strings.ReplaceAll(p, "/", "_"))+"/")
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		for _, f := range strings.Fields(sc.Text()) {
			f = strings.Trim(f, "{},")
			if strings.HasPrefix(f, dir) {
				if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(f, []byte("placeholder\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	path := filepath.Join(dir, "dbproxy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("the example configuration does not load: %v", err)
	}
	return cfg
}

func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("systemd/dbproxy.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	section := ""
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "["):
			section = l
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Errorf("not key=value in %s: %q", section, l)
			}
			keys[section+k] = append(keys[section+k], v)
		}
	}
	for k, want := range map[string]string{
		"[Service]Type":                     "notify",
		"[Service]NoNewPrivileges":          "yes",
		"[Service]ProtectSystem":            "strict",
		"[Service]ProtectHome":              "yes",
		"[Service]PrivateTmp":               "yes",
		"[Service]CapabilityBoundingSet":    "",
		"[Service]RestartPreventExitStatus": "2",
		"[Service]ExecStart":                "/usr/local/bin/dbproxy run --config /etc/dbproxy/dbproxy.yaml",
		"[Install]WantedBy":                 "multi-user.target",
	} {
		if got := keys[k]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

func TestGrafanaDashboardParses(t *testing.T) {
	b, err := os.ReadFile("grafana/dbproxy-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	queries := 0
	for _, p := range d.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		queries += len(p.Targets)
	}
	if d.UID == "" || queries < 20 {
		t.Errorf("uid %q, %d queries", d.UID, queries)
	}
}
