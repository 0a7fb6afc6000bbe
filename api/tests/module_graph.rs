//! The top-level modules of `api` and `app` form no cycle.
//!
//! For each crate, a module is a file `src/NAME.rs` or a folder `src/NAME/` (the crate root,
//! `lib.rs` or `main.rs`, is left out), and module A depends on module B when code in a file of A
//! names `crate::B` — in a `use`, a path or a `crate::{…}` group. Comments and string literals do
//! not count, nor does a module naming itself (`routes/work.rs` using `crate::routes::support`).
//! A cycle means two modules can only be understood, changed and tested together; the failure
//! prints it, with the files that make each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules it names, each with the files that name it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The top-level module a file belongs to (`routes/work.rs` → `routes`); `None` for the root.
fn module_of(relative: &Path) -> Option<String> {
    let mut components = relative.components();
    let first = components.next()?.as_os_str().to_str()?;
    let is_file = components.next().is_none();
    if is_file {
        let name = first.strip_suffix(".rs")?;
        (name != "lib" && name != "main").then(|| name.to_string())
    } else {
        Some(first.to_string())
    }
}

/// `source` without comments, string literals and character literals (each replaced by a space),
/// so that what is left is code.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let mut index = 0;
    let at =
        |index: usize, text: &str| text.chars().enumerate().all(|(offset, c)| chars.get(index + offset) == Some(&c));
    while index < chars.len() {
        if at(index, "//") {
            while index < chars.len() && chars[index] != '\n' {
                index += 1;
            }
        } else if at(index, "/*") {
            let mut depth = 0;
            while index < chars.len() {
                if at(index, "/*") {
                    depth += 1;
                    index += 2;
                } else if at(index, "*/") {
                    depth -= 1;
                    index += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    index += 1;
                }
            }
            code.push(' ');
        } else if let Some(hashes) = raw_string_start(&chars, index) {
            // r"…", r#"…"#, br"…": ends at a quote followed by as many hashes.
            index += chars[index..].iter().position(|c| *c == '"').expect("a raw string's quote") + 1;
            let end: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            while index < chars.len() && !at(index, &end) {
                index += 1;
            }
            index += end.len();
            code.push(' ');
        } else if chars[index] == '"' {
            index += 1;
            while index < chars.len() && chars[index] != '"' {
                index += if chars[index] == '\\' { 2 } else { 1 };
            }
            index += 1;
            code.push(' ');
        } else if chars[index] == '\'' && chars.get(index + 1) == Some(&'\\') {
            // An escaped character literal: '\n', '\'', '\u{1F600}' (the escaped character is skipped).
            index += 3;
            while index < chars.len() && chars[index] != '\'' {
                index += 1;
            }
            index += 1;
            code.push(' ');
        } else if chars[index] == '\'' && chars.get(index + 2) == Some(&'\'') {
            // 'x' (a lifetime such as 'a has no closing quote right after its first letter).
            index += 3;
            code.push(' ');
        } else {
            code.push(chars[index]);
            index += 1;
        }
    }
    code
}

/// The number of `#` of a raw string literal starting at `index`, if one does.
fn raw_string_start(chars: &[char], index: usize) -> Option<usize> {
    let previous_is_identifier = index > 0 && (chars[index - 1].is_alphanumeric() || chars[index - 1] == '_');
    if previous_is_identifier {
        return None;
    }
    let mut cursor = index;
    if chars.get(cursor) == Some(&'b') {
        cursor += 1;
    }
    if chars.get(cursor) != Some(&'r') {
        return None;
    }
    cursor += 1;
    let hashes = chars[cursor..].iter().take_while(|c| **c == '#').count();
    (chars.get(cursor + hashes) == Some(&'"')).then_some(hashes)
}

/// The top-level names `code` reaches through `crate::` (`crate::a::x`, `crate::{b, c::y}`).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let identifier = |text: &str| -> String { text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    for (start, _) in code.match_indices("crate") {
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = code[start + "crate".len()..].trim_start();
        let Some(rest) = rest.strip_prefix("::") else { continue };
        let rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The names at the group's top level: split on commas outside nested braces.
            let mut depth = 0;
            let mut item_start = true;
            for (offset, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = identifier(&group[offset..]);
                        if !name.is_empty() {
                            names.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = identifier(rest);
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// Every top-level module of the crate whose sources are in `src`, with its edges.
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut graph = Graph::new();
    let mut mentions = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(src).expect("under src");
        let Some(module) = module_of(relative) else { continue };
        graph.entry(module.clone()).or_default();
        let source = std::fs::read_to_string(file).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        for name in crate_paths(&code_only(&source)) {
            mentions.push((module.clone(), name, relative.display().to_string()));
        }
    }
    // Only names that are modules: `crate::Item` re-exported at the root is not one.
    for (from, to, file) in mentions {
        if from != to && graph.contains_key(&to) {
            graph.get_mut(&from).expect("known").entry(to).or_default().insert(file);
        }
    }
    graph
}

/// A cycle of `graph` (its modules in order, the first repeated at the end), if it has one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        InProgress,
        Done,
    }
    fn visit<'a>(
        graph: &'a Graph,
        node: &'a str,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::InProgress) => {
                let start = path.iter().position(|n| *n == node).expect("an in-progress node is on the path");
                let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::InProgress);
        path.push(node);
        for next in graph.get(node).into_iter().flat_map(|edges| edges.keys()) {
            if let Some(cycle) = visit(graph, next, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|node| visit(graph, node, &mut marks, &mut Vec::new()))
}

/// The cycle, one edge a line, with the files that make each edge.
fn describe(graph: &Graph, cycle: &[String]) -> String {
    cycle
        .windows(2)
        .map(|edge| {
            let files: Vec<&str> = graph[&edge[0]][&edge[1]].iter().map(String::as_str).collect();
            format!("  {} -> {}   (crate::{} in {})", edge[0], edge[1], edge[1], files.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_acyclic(crate_name: &str, src: &Path, expected_modules: &[&str]) {
    let graph = module_graph(src);
    // The walk found the crate: a wrong path would pass vacuously.
    for module in expected_modules {
        assert!(graph.contains_key(*module), "{crate_name}: no module {module} under {}: {graph:?}", src.display());
    }
    assert!(graph.values().any(|edges| !edges.is_empty()), "{crate_name}: no edge found: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("{crate_name}'s top-level modules form a cycle: {}\n{}", cycle.join(" -> "), describe(&graph, &cycle));
    }
}

#[test]
fn the_api_crates_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert_acyclic("api", &src, &["routes", "startup", "state", "cli"]);
}

#[test]
fn the_app_crates_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../app/src");
    assert_acyclic("app", &src, &["commands", "campaigns", "driver", "workers"]);
}

fn graph_of(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph.entry(to.to_string()).or_default();
        graph.entry(from.to_string()).or_default().entry(to.to_string()).or_default().insert(format!("{from}.rs"));
    }
    graph
}

#[test]
fn the_cycle_detector_finds_a_cycle_and_only_a_real_one() {
    // d → a → b → c → a, e alone: the cycle is a, b, c.
    let cyclic = graph_of(&[("d", "a"), ("a", "b"), ("b", "c"), ("c", "a"), ("c", "e")]);
    assert_eq!(find_cycle(&cyclic), Some(vec!["a".to_string(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(describe(&cyclic, &["a".to_string(), "b".into()]), "  a -> b   (crate::b in a.rs)");
    // A diamond (a → b → d, a → c → d) shares a node without a cycle.
    let diamond = graph_of(&[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("e", "d")]);
    assert_eq!(find_cycle(&diamond), None);
    // Two modules naming each other are the smallest cycle.
    let pair = graph_of(&[("x", "y"), ("y", "x")]);
    assert_eq!(find_cycle(&pair), Some(vec!["x".to_string(), "y".into(), "x".into()]));
}

#[test]
fn crate_paths_are_read_from_code_only() {
    let source = r##"
        use crate::alpha::Thing;
        use crate::{beta, gamma::{One, Two}, delta::*};
        pub(crate) fn f() -> crate :: epsilon::Type { crate::zeta::g() }
        // crate::commented
        /* crate::blocked /* nested crate::deeper */ */
        const TEXT: &str = "crate::quoted \" crate::escaped";
        const RAW: &str = r#"crate::raw "# ;
        fn lifetime<'a>(x: &'a str) -> char { let _ = (x, '\'', '\u{22}'); '"' }
        const AFTER: u8 = crate::eta::N;
        macro_rules! m { () => { $crate::macro_path::x() } }
        fn not_a_crate() { mycrate::iota(); }
    "##;
    let names: Vec<String> = crate_paths(&code_only(source)).into_iter().collect();
    assert_eq!(names, ["alpha", "beta", "delta", "epsilon", "eta", "gamma", "zeta"]);
}

#[test]
fn files_belong_to_their_top_level_module() {
    assert_eq!(module_of(Path::new("routes/work.rs")).as_deref(), Some("routes"));
    assert_eq!(module_of(Path::new("routes/mod.rs")).as_deref(), Some("routes"));
    assert_eq!(module_of(Path::new("routes/deep/er.rs")).as_deref(), Some("routes"));
    assert_eq!(module_of(Path::new("startup.rs")).as_deref(), Some("startup"));
    assert_eq!(module_of(Path::new("lib.rs")), None);
    assert_eq!(module_of(Path::new("main.rs")), None);
}
