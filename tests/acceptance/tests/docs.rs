//! Keeps the hand-written docs honest: in README.md and every docs/guides/*.md,
//! each relative Markdown link names a file or directory that exists, each
//! `make TARGET` in inline code or a code block names a target of the
//! top-level Makefile, and each guide opens with front matter that has a
//! page_title. Needs no root and no terraform.

use std::collections::BTreeSet;
use std::path::PathBuf;

use merak_acceptance::repo_root;

/// README.md and the guides, with their text.
fn pages() -> Vec<(PathBuf, String)> {
    let root = repo_root();
    let mut paths = vec![root.join("README.md")];
    let guides = std::fs::read_dir(root.join("docs/guides")).expect("docs/guides is readable");
    let mut guides: Vec<PathBuf> = guides
        .map(|entry| entry.expect("a docs/guides entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    guides.sort();
    paths.extend(guides);
    paths.into_iter().map(|path| (path.clone(), std::fs::read_to_string(&path).expect("a page is UTF-8"))).collect()
}

/// The page's text outside fenced code blocks, and the fenced blocks' text.
fn split_fences(text: &str) -> (String, String) {
    let (mut prose, mut code, mut fenced) = (String::new(), String::new(), false);
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else {
            let out = if fenced { &mut code } else { &mut prose };
            out.push_str(line);
            out.push('\n');
        }
    }
    (prose, code)
}

/// The targets the top-level Makefile defines: rules (`name:`) and .PHONY.
fn make_targets() -> BTreeSet<String> {
    let makefile = std::fs::read_to_string(repo_root().join("Makefile")).expect("Makefile is readable");
    let mut targets = BTreeSet::new();
    for line in makefile.lines() {
        if let Some(phony) = line.strip_prefix(".PHONY:") {
            targets.extend(phony.split_whitespace().map(str::to_string));
        } else if let Some((name, rest)) = line.split_once(':') {
            let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if plain && !rest.starts_with('=') {
                targets.insert(name.to_string());
            }
        }
    }
    targets
}

/// The targets named by `make ...` in `code`: variables (`X=1`) and flags skipped.
fn made_targets(code: &str) -> Vec<String> {
    let words: Vec<&str> = code.split_whitespace().collect();
    let mut found = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if *word != "make" {
            continue;
        }
        let target = words[i + 1..].iter().find(|w| !w.contains('=') && !w.starts_with('-'));
        if let Some(target) = target {
            let name = target.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            if !name.is_empty() {
                found.push(name.to_string());
            }
        }
    }
    found
}

#[test]
fn relative_links_resolve() {
    let mut broken = Vec::new();
    for (path, text) in pages() {
        let dir = path.parent().expect("a page has a directory");
        let prose = split_fences(&text).0;
        for (i, _) in prose.match_indices("](") {
            let target = prose[i + 2..].split([')', ' ']).next().unwrap_or_default();
            let file = target.split('#').next().unwrap_or_default();
            let external = ["http://", "https://", "mailto:"].iter().any(|scheme| target.starts_with(scheme));
            if !external && !file.is_empty() && !dir.join(file).exists() {
                broken.push(format!("{}: {target}", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing:\n{}", broken.join("\n"));
}

#[test]
fn make_targets_exist() {
    let targets = make_targets();
    let mut unknown = Vec::new();
    for (path, text) in pages() {
        let (prose, code) = split_fences(&text);
        // Inline code may wrap across lines; a code block's commands end with theirs.
        let spans = prose.split('`').skip(1).step_by(2).chain(code.lines());
        for name in spans.flat_map(made_targets) {
            if !targets.contains(&name) {
                unknown.push(format!("{}: make {name}", path.display()));
            }
        }
    }
    assert!(unknown.is_empty(), "no such Makefile target:\n{}\n(known: {targets:?})", unknown.join("\n"));
}

#[test]
fn guides_have_front_matter() {
    for (path, text) in pages().into_iter().filter(|(path, _)| !path.ends_with("README.md")) {
        let body = text.strip_prefix("---\n").unwrap_or_else(|| panic!("{}: no front matter", path.display()));
        let front = body.split("\n---\n").next().unwrap();
        assert!(body.contains("\n---\n"), "{}: front matter not closed", path.display());
        assert!(front.lines().any(|l| l.starts_with("page_title:")), "{}: no page_title", path.display());
    }
}
