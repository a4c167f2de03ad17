// Package docs holds the user documentation; its test checks that every
// relative link in README.md and docs/*.md points at a file that exists and,
// with a #fragment, at a heading that exists, so moving text between pages
// cannot silently break the way a reader finds it.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/dbproxy/dbproxy/config"
)

var linkRE = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)\)`)

// pages are the Markdown files whose links are checked, relative to this directory.
func pages(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{"../README.md"}, files...)
}

// proseLines returns the lines of a Markdown file outside fenced code blocks.
func proseLines(text string) []string {
	var out []string
	fenced := false
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			out = append(out, l)
		}
	}
	return out
}

// slug is GitHub's anchor for a heading: lower case, punctuation dropped,
// spaces turned into hyphens.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors returns the set of heading anchors of a Markdown file, with
// GitHub's -1, -2 suffixes for repeated headings.
func anchors(text string) map[string]bool {
	set := map[string]bool{}
	seen := map[string]int{}
	for _, l := range proseLines(text) {
		h := strings.TrimLeft(l, "#")
		if len(h) == len(l) || !strings.HasPrefix(h, " ") {
			continue
		}
		s := slug(strings.TrimSpace(h))
		if n := seen[s]; n > 0 {
			set[s+"-"+strconv.Itoa(n)] = true
		} else {
			set[s] = true
		}
		seen[s]++
	}
	return set
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"Limitations / not yet":                      "limitations--not-yet",
		"`backends.<name>.tls` (dbproxy → database)": "backendsnametls-dbproxy--database",
		"How MySQL/MariaDB clients connect":          "how-mysqlmariadb-clients-connect",
		"`make demo`: a running proxy to try":        "make-demo-a-running-proxy-to-try",
		"SIGTERM / SIGINT: graceful shutdown":        "sigterm--sigint-graceful-shutdown",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRelativeLinks(t *testing.T) {
	checked := 0
	for _, page := range pages(t) {
		text, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range proseLines(string(text)) {
			for _, m := range linkRE.FindAllStringSubmatch(l, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				checked++
				if err := checkLink(page, target); err != "" {
					t.Errorf("%s (prose line %d): link %q: %s", page, i+1, target, err)
				}
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d relative links found; the link pattern is broken", checked)
	}
}

// checkLink says what is wrong with a relative link from page, or "".
func checkLink(page, target string) string {
	file, frag, _ := strings.Cut(target, "#")
	path := page
	if file != "" {
		path = filepath.Join(filepath.Dir(page), file)
	}
	text, err := os.ReadFile(path)
	if err != nil {
		if info, serr := os.Stat(path); serr == nil && info.IsDir() && frag == "" {
			return ""
		}
		return "no such file " + path
	}
	if frag == "" {
		return ""
	}
	if !strings.HasSuffix(path, ".md") {
		return "anchor into a file that is not Markdown"
	}
	if !anchors(string(text))[frag] {
		return "no heading with anchor #" + frag + " in " + path
	}
	return ""
}

// TestEveryPageLinked keeps every page reachable: each docs/*.md is linked
// from README.md or from another page (add new topic pages to README's
// table).
func TestEveryPageLinked(t *testing.T) {
	texts := map[string]string{}
	for _, p := range pages(t) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		texts[p] = string(b)
	}
	for page := range texts {
		if page == "../README.md" {
			continue
		}
		linked := strings.Contains(texts["../README.md"], "(docs/"+page)
		for other, text := range texts {
			if other != page && other != "../README.md" && strings.Contains(text, "("+page) {
				linked = true
			}
		}
		if !linked {
			t.Errorf("docs/%s is linked from neither README.md nor another page", page)
		}
	}
}

// TestREADMEConfigIsValid keeps the README's minimal configuration loadable:
// it is written to a temp dir with its secret files, then loaded and validated.
func TestREADMEConfigIsValid(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no yaml block")
	}
	dir := t.TempDir()
	yml := strings.ReplaceAll(string(m[1]), "/etc/dbproxy/", dir+"/")
	for _, f := range []string{"role-id", "secret-id"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("placeholder\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "dbproxy.yaml")
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(path); err != nil {
		t.Fatalf("README.md's configuration does not load: %v", err)
	}
}
