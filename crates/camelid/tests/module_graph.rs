//! The layout rule of docs/ARCHITECTURE.md, checked: within every module of every crate, the
//! submodules depend on each other without a circle (each submodule taken with everything
//! below it). A submodule may use its parent's own items (`super::X` defined in `mod.rs`), and a
//! parent may use its children: that is one unit. What this forbids is what made the code hard
//! to change: `model → cpu_forward → cpu_attention → model`, `state → arena → chat → run → state`.
//!
//! Dependencies are read from the source: every `crate::…`, `super::…` and `self::…` path outside
//! comments, resolved to the deepest module that exists (inline `mod x { … }` blocks are followed
//! for `super`). A hand-written reader, not `syn`: the rule needs paths, not a syntax tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Module path of a source file relative to `src/`.
fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// Identifier segments of a path starting at `s` (after `crate::` etc.): `a::b::{c, d::e}` gives
/// `[a, b, c]` and `[a, b, d, e]`.
fn paths_at(s: &str) -> Vec<Vec<String>> {
    let mut segs = vec![];
    let mut rest = s;
    loop {
        let id: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if id.is_empty() {
            if let Some(group) = rest.strip_prefix('{') {
                // Split the group's top level at commas.
                let (mut depth, mut start, mut out) = (0, 0, vec![]);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            out.push(&group[start..i]);
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.push(&group[start..i]);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                return out
                    .into_iter()
                    .flat_map(|item| paths_at(item.trim_start()))
                    .map(|tail| segs.iter().cloned().chain(tail).collect())
                    .collect();
            }
            break;
        }
        rest = &rest[id.len()..];
        segs.push(id);
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    vec![segs]
}

/// Whether the first `{` group in `s` is closed within it.
fn group_closed(s: &str) -> bool {
    let Some(open) = s.find('{') else { return true };
    let mut depth = 0;
    for c in s[open..].chars() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Every module a source file refers to, as absolute paths (before matching to modules).
fn references(file_module: &Module, text: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    // Inline modules open at this point: (name, brace depth at which they close).
    let mut inline: Vec<(String, i32)> = vec![];
    let mut depth = 0i32;
    // Lines without their comments: a grouped path wrapped over lines (`use crate::{` then
    // one item a line, as rustfmt writes long imports) is read on with the lines after it.
    let lines: Vec<&str> = text
        .lines()
        .map(|line| {
            let code = line.trim_start();
            if code.starts_with("//") {
                ""
            } else {
                code.split(" //").next().unwrap_or(code)
            }
        })
        .collect();
    for (n, &code) in lines.iter().enumerate() {
        let here: Module = file_module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        for (prefix, base) in [
            ("crate::", Vec::new()),
            ("super::", here[..here.len().saturating_sub(1)].to_vec()),
            ("self::", here.clone()),
        ] {
            let mut from = 0;
            while let Some(at) = code[from..].find(prefix) {
                let start = from + at;
                from = start + prefix.len();
                let before = code[..start].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue; // `camelid_model::…`, `super::super::…` handled as written
                }
                let mut base = base.clone();
                while code[from..].starts_with("super::") {
                    base.pop();
                    from += "super::".len();
                }
                let mut rest = code[from..].to_string();
                for more in lines.iter().skip(n + 1).take(200) {
                    let grouped = rest.starts_with('{') || rest.contains("::{");
                    if !grouped || group_closed(&rest) {
                        break;
                    }
                    rest.push(' ');
                    rest.push_str(more);
                }
                for tail in paths_at(&rest) {
                    out.push(base.iter().cloned().chain(tail).collect());
                }
            }
        }
        let words: Vec<&str> = code.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "mod") {
            if words.get(i + 2) == Some(&"{") {
                inline.push((words[i + 1].to_string(), depth + 1));
            }
        }
        for c in code.chars() {
            match c {
                '{' => depth += 1,
                '}' => {
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                    depth -= 1;
                }
                _ => {}
            }
        }
    }
    out
}

/// The dependency edges between modules of one crate, from its files (path relative to `src/`,
/// text).
fn edges(files: &[(PathBuf, String)]) -> BTreeSet<(Module, Module)> {
    let modules: BTreeSet<Module> = files.iter().map(|(p, _)| module_of(p)).collect();
    let mut out = BTreeSet::new();
    for (path, text) in files {
        let from = module_of(path);
        for r in references(&from, text) {
            let to = (0..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|m| modules.contains(m))
                .unwrap_or_default();
            if to != from {
                out.insert((from.clone(), to));
            }
        }
    }
    out
}

/// Circles among the children of each module (each child with its subtree), as readable
/// strings.
fn circles(edges: &BTreeSet<(Module, Module)>) -> Vec<String> {
    let parents: BTreeSet<Module> = edges
        .iter()
        .flat_map(|(a, b)| [a, b])
        .flat_map(|m| (0..m.len()).map(|n| m[..n].to_vec()))
        .collect();
    let mut found = vec![];
    for parent in parents {
        let child = |m: &Module| -> Option<String> {
            (m.len() > parent.len() && m.starts_with(&parent)).then(|| m[parent.len()].clone())
        };
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            if let (Some(ca), Some(cb)) = (child(a), child(b)) {
                if ca != cb {
                    graph.entry(ca).or_default().insert(cb);
                }
            }
        }
        // Depth-first search for a back edge; report the circle it closes.
        fn visit(
            n: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            stack: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(i) = stack.iter().position(|s| s == n) {
                let mut c = stack[i..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            if done.contains(n) {
                return None;
            }
            stack.push(n.to_string());
            for next in graph.get(n).into_iter().flatten() {
                if let Some(c) = visit(next, graph, stack, done) {
                    return Some(c);
                }
            }
            stack.pop();
            done.insert(n.to_string());
            None
        }
        let mut done = BTreeSet::new();
        for n in graph.keys() {
            if let Some(c) = visit(n, &graph, &mut vec![], &mut done) {
                let at = if parent.is_empty() {
                    "crate".to_string()
                } else {
                    parent.join("::")
                };
                found.push(format!("in {at}: {}", c.join(" → ")));
                break;
            }
        }
    }
    found
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), text));
        }
    }
}

#[test]
fn no_crate_has_a_circle_of_module_imports() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    let mut problems = vec![];
    for e in std::fs::read_dir(&crates).unwrap() {
        let src = e.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = vec![];
        rust_files(&src, &src, &mut files);
        checked += files.len();
        for c in circles(&edges(&files)) {
            problems.push(format!("{}: {c}", src.display()));
        }
    }
    assert!(checked > 50, "read only {checked} source files");
    assert!(
        problems.is_empty(),
        "import circles:\n{}",
        problems.join("\n")
    );
}

fn file(path: &str, text: &str) -> (PathBuf, String) {
    (PathBuf::from(path), text.to_string())
}

#[test]
fn the_reader_finds_a_circle_through_three_modules() {
    // The circle of the old model crate, in miniature (grouped imports, `super`, a use inside
    // a function body).
    let files = [
        file(
            "lib.rs",
            "pub mod model;\npub mod cpu;\npub mod attention;\n",
        ),
        file(
            "model.rs",
            "use crate::{\n    cpu::forward,\n    error::E,\n};\n",
        ),
        file("cpu/mod.rs", "mod inner;\n"),
        file(
            "cpu/inner.rs",
            "fn f() {\n    use super::super::attention::run;\n    crate::attention::run();\n}\n",
        ),
        file(
            "attention.rs",
            "// use crate::model; (a comment)\nuse crate::model::Chunk;\n",
        ),
    ];
    let found = circles(&edges(&files));
    assert_eq!(found.len(), 1, "{found:?}");
    let ring: BTreeSet<&str> = found[0]
        .trim_start_matches("in crate: ")
        .split(" → ")
        .collect();
    assert_eq!(
        ring,
        BTreeSet::from(["model", "cpu", "attention"]),
        "{found:?}"
    );
    // Without the last edge there is none; a child using its parent's items is no circle.
    let mut acyclic = files.to_vec();
    acyclic[4] = file("attention.rs", "use crate::error::E;\n");
    acyclic.push(file(
        "cpu/other.rs",
        "use super::Shared;\nuse super::inner::f;\n",
    ));
    assert!(circles(&edges(&acyclic)).is_empty());
}

#[test]
fn inline_modules_resolve_super_from_where_they_are() {
    // `super` inside `mod avx2 { … }` of quant/x86.rs is quant::x86, not quant.
    let files = [
        file("quant/mod.rs", "mod x86;\nmod weight;\nuse weight::W;\n"),
        file(
            "quant/x86.rs",
            "mod avx2 {\n    use super::helpers::h;\n}\nmod helpers {}\n",
        ),
        file("quant/weight.rs", "use super::x86::k;\n"),
    ];
    let e = edges(&files);
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    assert!(!e.contains(&(m("quant::x86"), m("quant"))), "{e:?}");
    assert!(e.contains(&(m("quant::weight"), m("quant::x86"))), "{e:?}");
}
