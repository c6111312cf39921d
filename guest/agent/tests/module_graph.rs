//! The agent's modules must form a DAG (issue 15: leaf modules receive what they use, the
//! reaper, the outbox, the stream table, instead of reaching back up for the whole `Agent`).
//! This test reads `src/*.rs`, takes every `crate::<module>` reference (in `use` lines, groups
//! `use crate::{a, b}` and inline paths) and every exported macro used through `crate::` as an
//! edge, and fails naming the circle when there is one. The crate root (main.rs) declares every
//! module, so a module that reaches for an item of the root closes a circle too.
//!
//! A text scan rather than a compiler plugin: the modules are one flat level (no nested module
//! files), which a scan reads exactly; comments are stripped first so prose cannot add edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Drop `//` comments (doc comments included) and string literals' contents, so that only code
/// is scanned. Block comments are not used in the agent; they are stripped too.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    let (mut in_str, mut in_block) = (false, false);
    while i < b.len() {
        let c = b[i];
        if in_block {
            if c == b'*' && b.get(i + 1) == Some(&b'/') {
                in_block = false;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
                out.push('"');
            }
            i += 1;
            continue;
        }
        match c {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                in_block = true;
                i += 2;
            }
            // a char literal like '"' must not open a string
            b'\'' if b.get(i + 2) == Some(&b'\'') => {
                out.push_str("' '");
                i += 3;
            }
            b'"' => {
                in_str = true;
                out.push('"');
                i += 1;
            }
            _ => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The first path segments named in a `use` group body, e.g. `a, b::{c, d}, e::f` → a, b, e.
fn group_heads(body: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && depth == 0 && !c.is_whitespace() => {
                let id = ident_at(&body[i..]);
                if !id.is_empty() {
                    heads.push(id.to_string());
                }
                start = false;
            }
            _ => {}
        }
    }
    heads
}

/// Names a file refers to through `crate::` (first segment only).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = code;
    while let Some(pos) = rest.find("crate::") {
        // `$crate::` (inside a macro) is the crate too.
        let before = rest[..pos].chars().last();
        let after = &rest[pos + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `foo_crate::`
        }
        if let Some(body) = after.strip_prefix('{') {
            let mut depth = 1;
            let end = body
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(body.len());
            refs.extend(group_heads(&body[..end]));
        } else {
            let id = ident_at(after);
            if !id.is_empty() {
                refs.insert(id.to_string());
            }
        }
    }
    refs
}

/// `#[macro_export] macro_rules! name` in a file: the macro lives at the crate root, but the
/// file that defines it is what a `crate::name!` user depends on.
fn exported_macros(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(pos) = rest.find("#[macro_export]") {
        rest = &rest[pos + "#[macro_export]".len()..];
        if let Some(m) = rest.trim_start().strip_prefix("macro_rules!") {
            let id = ident_at(m.trim_start());
            if !id.is_empty() {
                out.push(id.to_string());
            }
        }
    }
    out
}

/// `mod x;` declarations of the crate root.
fn declared_modules(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')).map(|m| m.trim().to_string())
        })
        .collect()
}

/// files: module name → source ("main" is the crate root).
fn build_graph(files: &BTreeMap<String, String>) -> Graph {
    let code: BTreeMap<&str, String> = files.iter().map(|(m, s)| (m.as_str(), strip_comments(s))).collect();
    let mut macro_home: BTreeMap<String, String> = BTreeMap::new();
    for (m, c) in &code {
        for name in exported_macros(c) {
            macro_home.insert(name, m.to_string());
        }
    }
    let mut g = Graph::new();
    for (m, c) in &code {
        let edges = g.entry(m.to_string()).or_default();
        if *m == "main" {
            edges.extend(declared_modules(c).into_iter().filter(|d| code.contains_key(d.as_str())));
            continue;
        }
        for r in crate_refs(c) {
            let to = if code.contains_key(r.as_str()) && r != "main" {
                r
            } else if let Some(home) = macro_home.get(&r) {
                home.clone()
            } else {
                "main".to_string() // an item of the crate root
            };
            if to != *m {
                edges.insert(to);
            }
        }
    }
    g
}

/// A circle as a path `a → b → … → a`, if the graph has one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(n: &str, g: &Graph, mark: &mut BTreeMap<String, Mark>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        mark.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match mark.get(m).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = visit(m, g, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark.insert(n.to_string(), Mark::Done);
        None
    }
    let mut mark = BTreeMap::new();
    for n in g.keys() {
        if mark.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(n, g, &mut mark, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn agent_sources() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.extension().is_some_and(|x| x == "rs") {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            files.insert(name, std::fs::read_to_string(&p).expect("read module"));
        }
        assert!(!p.is_dir(), "{} is a module directory; the scan only reads flat modules", p.display());
    }
    files
}

#[test]
fn agent_modules_form_a_dag() {
    let files = agent_sources();
    assert!(files.len() > 10, "found only {} modules in src/", files.len());
    let g = build_graph(&files);
    // The scan sees the edges we know exist (a scan that finds nothing would pass vacuously).
    assert!(g["conn"].contains("rpc"), "conn → rpc not seen: {g:?}");
    assert!(g["containers"].contains("error"), "containers → error not seen");
    assert!(g["disks"].contains("util"), "disks → util (check_run_path) not seen");
    assert!(g["modules"].contains("util"), "modules → util (the log! macro) not seen");
    if let Some(c) = find_cycle(&g) {
        panic!("module circle in the guest agent: {}", c.join(" → "));
    }
}

fn graph_of(files: &[(&str, &str)]) -> Graph {
    build_graph(&files.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect())
}

#[test]
fn checker_finds_a_circle_through_use_groups_and_inline_paths() {
    let g = graph_of(&[
        ("main", "mod a;\nmod b;\nmod c;\n"),
        ("a", "use crate::{b::{X, Y}, util};\n"),
        ("b", "fn f() { crate::c::g() }\n"),
        ("c", "use crate::error::E;\nuse crate::a::Z;\n"),
    ]);
    let c = find_cycle(&g).expect("a → b → c → a is a circle");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4, "{c:?}");
}

#[test]
fn checker_ignores_comments_strings_and_accepts_a_dag() {
    let g = graph_of(&[
        ("main", "mod a;\nmod b;\n"),
        ("a", "use crate::b;\n"),
        ("b", "//! crate::a would be a circle\nconst S: &str = \"crate::a\";\n/* crate::a */ fn f() {}\n"),
    ]);
    assert_eq!(find_cycle(&g), None, "{g:?}");
    assert!(g["a"].contains("b"));
}

#[test]
fn checker_counts_macros_and_root_items() {
    let g = graph_of(&[
        ("main", "mod util;\nmod m;\npub const PORT: &str = \"x\";\n"),
        ("util", "#[macro_export]\nmacro_rules! log { () => {} }\nfn f() { crate::m::g() }\n"),
        ("m", "use crate::log;\n"),
    ]);
    assert!(find_cycle(&g).is_some(), "util → m → util (through the log! macro): {g:?}");
    let g = graph_of(&[("main", "mod m;\npub const PORT: &str = \"x\";\n"), ("m", "fn f() { let _ = crate::PORT; }\n")]);
    assert!(find_cycle(&g).is_some(), "m → main (an item of the root) → m: {g:?}");
}
