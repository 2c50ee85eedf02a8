//! Every crate of the workspace has an acyclic import graph between its source files: no
//! file reaches (by `use` or an inline path) into a file that reaches back into it, however
//! long the way round. Test modules are left out: a test may read the module it tests.
//!
//! The graph is read from the source itself: each crate root's `mod` declarations give the
//! files and their module paths; `use` trees and inline `crate::`, `super::`, `self::` and
//! child-module paths give the edges; a path that names an item a module re-exports with
//! `pub use` is followed to the module that defines it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

/// One source file of a crate.
struct Module {
    /// Its path relative to the repository, for messages.
    file: String,
    /// Its code without comments, string contents and test items.
    code: String,
    /// Its child modules (declared with `mod name;` or inline `mod name { … }`).
    children: BTreeSet<String>,
}

/// A crate's module tree: module path (`crate`, `crate::a`, `crate::a::b`) to its file.
type Tree = BTreeMap<Vec<String>, Module>;

#[test]
fn no_crate_has_an_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cycles = Vec::new();
    let mut checked = 0;
    for krate in crate_dirs(root) {
        for entry in ["src/lib.rs", "src/main.rs"] {
            let path = krate.join(entry);
            if !path.is_file() {
                continue;
            }
            let tree = module_tree(root, &path);
            checked += tree.len();
            let why = edges_named(&tree);
            let graph = edges(&tree);
            for cycle in cycles_of(&graph) {
                let mut lines = Vec::new();
                for from in &cycle {
                    for (to, named) in &why[from] {
                        if cycle.contains(to) {
                            let (from, to) = (&tree[from].file, &tree[to].file);
                            lines.push(format!("  {from} → {to} ({named})"));
                        }
                    }
                }
                cycles.push(lines.join("\n"));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} files read: is the layout still src/?"
    );
    assert!(
        cycles.is_empty(),
        "import cycles between files (each block one strongly connected group, with its edges):\n{}",
        cycles.join("\n\n")
    );
}

#[test]
fn the_checker_sees_a_cycle_through_super_and_a_child_module() {
    let parent = "mod child;\nuse child::Thing;\npub struct Msg;\n";
    let child = "use super::Msg;\npub struct Thing;\n#[cfg(test)]\nmod tests { use super::*; }\n";
    let mut tree = Tree::new();
    tree.insert(vec!["crate".into()], module("lib.rs", parent));
    tree.insert(
        vec!["crate".into(), "child".into()],
        module("child.rs", child),
    );
    assert_eq!(cycles_of(&edges(&tree)).len(), 1);
    // Moving the message to a third module breaks the cycle.
    let parent = "mod child;\nmod msg;\nuse child::Thing;\n";
    let child = "use crate::msg::Msg;\npub struct Thing;\n";
    let mut tree = Tree::new();
    tree.insert(vec!["crate".into()], module("lib.rs", parent));
    tree.insert(
        vec!["crate".into(), "child".into()],
        module("child.rs", child),
    );
    tree.insert(
        vec!["crate".into(), "msg".into()],
        module("msg.rs", "pub struct Msg;"),
    );
    assert!(cycles_of(&edges(&tree)).is_empty());
}

#[test]
fn re_exports_are_followed_to_the_defining_module() {
    let lib = "pub mod a;\npub mod b;\npub use a::Thing;\nuse b::Other;\n";
    let a = "pub struct Thing;\n";
    let b = "use crate::Thing;\npub struct Other; // crate::b in a comment is no edge\n";
    let mut tree = Tree::new();
    tree.insert(vec!["crate".into()], module("lib.rs", lib));
    tree.insert(vec!["crate".into(), "a".into()], module("a.rs", a));
    tree.insert(vec!["crate".into(), "b".into()], module("b.rs", b));
    let graph = edges(&tree);
    assert!(cycles_of(&graph).is_empty(), "b uses a's item, not lib.rs");
    let b_path = vec!["crate".to_owned(), "b".to_owned()];
    let a_path = vec!["crate".to_owned(), "a".to_owned()];
    assert!(graph[&b_path].contains(&a_path));
}

fn module(file: &str, source: &str) -> Module {
    let code = strip_tests(&strip_comments(source));
    Module {
        file: file.to_owned(),
        children: child_modules(&code),
        code,
    }
}

/// The workspace's crates: the root package and each directory with a `Cargo.toml` and a
/// `src/` beside it.
fn crate_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    let Ok(entries) = fs::read_dir(root) else {
        return dirs;
    };
    let mut members: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| dir.join("Cargo.toml").is_file() && dir.join("src").is_dir())
        .filter(|dir| !dir.ends_with("target"))
        .collect();
    members.sort();
    dirs.extend(members);
    dirs
}

/// Reads the module tree from `entry` (a `lib.rs` or `main.rs`) through its `mod`
/// declarations.
fn module_tree(repo: &Path, entry: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut pending = vec![(vec!["crate".to_owned()], entry.to_path_buf())];
    while let Some((path, file)) = pending.pop() {
        let Ok(source) = fs::read_to_string(&file) else {
            continue;
        };
        let shown = file
            .strip_prefix(repo)
            .unwrap_or(&file)
            .display()
            .to_string();
        let module = module(&shown, &source);
        // The directory of child module files: beside a crate root or `mod.rs`, else a folder
        // named after the file.
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let parent = file.parent().unwrap_or(Path::new("."));
        let dir = if path.len() == 1 || stem == "mod" {
            parent.to_path_buf()
        } else {
            parent.join(stem)
        };
        for child in declared_files(&module.code) {
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(&child).join("mod.rs");
            let found = if flat.is_file() { flat } else { nested };
            let mut child_path = path.clone();
            child_path.push(child);
            pending.push((child_path, found));
        }
        tree.insert(path, module);
    }
    tree
}

/// Removes `//` and `/* */` comments and the contents of string and char literals (so that
/// neither is read as a path), keeping line structure.
fn strip_comments(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !ident_before(&chars, i) {
            // A raw string: r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Removes every item under `#[cfg(test)]` (a test module's block, a test-only `use`).
fn strip_tests(code: &str) -> String {
    let mut out = code.to_owned();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let semi = rest.find(';');
        let brace = rest.find('{');
        let end = match (brace, semi) {
            (Some(open), semi) if semi.is_none_or(|semi| open < semi) => {
                let mut depth = 0;
                let mut end = rest.len();
                for (offset, c) in rest[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + offset + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (_, Some(semi)) => semi + 1,
            _ => rest.len(),
        };
        out.replace_range(at..at + end, "");
    }
    out
}

/// Names of the modules a file declares with `mod name;` (their code is in other files).
fn declared_files(code: &str) -> Vec<String> {
    mod_declarations(code)
        .into_iter()
        .filter(|(_, inline)| !inline)
        .map(|(name, _)| name)
        .collect()
}

/// Names of every module a file declares, in another file or inline.
fn child_modules(code: &str) -> BTreeSet<String> {
    mod_declarations(code)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// `(name, inline)` for each `mod` declaration.
fn mod_declarations(code: &str) -> Vec<(String, bool)> {
    let mut found = Vec::new();
    let words: Vec<&str> = code
        .split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    for (index, word) in words.iter().enumerate() {
        if *word != "mod" {
            continue;
        }
        let Some(next) = words.get(index + 1) else {
            continue;
        };
        let name: String = next
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        let after = &next[name.len()..];
        let inline = if after.is_empty() {
            words.get(index + 2).is_some_and(|w| w.starts_with('{'))
        } else {
            after.starts_with('{')
        };
        found.push((name, inline));
    }
    found
}

/// The module each file reaches, by file: `module → modules it imports`.
fn edges(tree: &Tree) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    edges_named(tree)
        .into_iter()
        .map(|(from, to)| (from, to.into_keys().collect()))
        .collect()
}

/// The edges with the first path that makes each: `module → (target → path)`.
fn edges_named(tree: &Tree) -> BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> {
    let exports: HashMap<&Vec<String>, HashMap<String, Vec<String>>> = tree
        .iter()
        .map(|(path, module)| (path, re_exports(path, module)))
        .collect();
    let mut graph = BTreeMap::new();
    for (path, module) in tree {
        let mut targets = BTreeMap::new();
        for used in used_paths(path, module) {
            if let Some(target) = resolve(tree, &exports, &used, 0)
                && &target != path
            {
                targets.entry(target).or_insert_with(|| used.join("::"));
            }
        }
        graph.insert(path.clone(), targets);
    }
    graph
}

/// The items a module re-exports with `pub use`: name → the absolute path it names.
fn re_exports(path: &[String], module: &Module) -> HashMap<String, Vec<String>> {
    let mut map = HashMap::new();
    for (public, tree) in use_statements(&module.code) {
        if !public {
            continue;
        }
        for (full, alias) in expand_use(&tree) {
            let Some(last) = full.last() else { continue };
            if last == "*" {
                continue;
            }
            let name = alias.unwrap_or_else(|| last.clone());
            map.insert(name, absolute(path, &module.children, &full));
        }
    }
    map
}

/// Every path a module names that starts in this crate, made absolute.
fn used_paths(path: &[String], module: &Module) -> Vec<Vec<String>> {
    let mut used = Vec::new();
    for (_, tree) in use_statements(&module.code) {
        for (full, _) in expand_use(&tree) {
            if starts_in_crate(&full, &module.children) {
                used.push(absolute(path, &module.children, &full));
            }
        }
    }
    // Inline paths outside `use` statements.
    let chars: Vec<char> = module.code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !(chars[i].is_alphabetic() || chars[i] == '_') || ident_before(&chars, i) {
            i += 1;
            continue;
        }
        let preceded_by_colons = i >= 2 && chars[i - 1] == ':' && chars[i - 2] == ':';
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            segments.push(chars[start..j].iter().collect::<String>());
            if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
                j += 2;
                if chars.get(j).is_some_and(|c| c.is_alphabetic() || *c == '_') {
                    continue;
                }
            }
            break;
        }
        if segments.len() > 1 && !preceded_by_colons && starts_in_crate(&segments, &module.children)
        {
            used.push(absolute(path, &module.children, &segments));
        }
        i = j.max(i + 1);
    }
    used
}

fn starts_in_crate(segments: &[String], children: &BTreeSet<String>) -> bool {
    segments.first().is_some_and(|first| {
        matches!(first.as_str(), "crate" | "super" | "self") || children.contains(first)
    })
}

/// `segments` as seen from module `path` made absolute (`crate::…`).
fn absolute(path: &[String], children: &BTreeSet<String>, segments: &[String]) -> Vec<String> {
    let mut base = path.to_vec();
    let mut rest = segments;
    match segments.first().map(String::as_str) {
        Some("crate") => {
            base = vec!["crate".to_owned()];
            rest = &segments[1..];
        }
        Some("self") => rest = &segments[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some(first) if children.contains(first) => {}
        _ => return segments.to_vec(),
    }
    base.extend(rest.iter().cloned());
    base
}

/// The module file a path lands in: the longest prefix that is a module, followed through
/// re-exports.
fn resolve(
    tree: &Tree,
    exports: &HashMap<&Vec<String>, HashMap<String, Vec<String>>>,
    path: &[String],
    depth: usize,
) -> Option<Vec<String>> {
    let mut prefix = path.len();
    while prefix > 0 {
        let candidate = path[..prefix].to_vec();
        if tree.contains_key(&candidate) {
            if depth < 8
                && let Some(name) = path.get(prefix)
                && let Some(target) = exports.get(&candidate).and_then(|map| map.get(name))
            {
                let mut followed = target.clone();
                followed.extend(path[prefix + 1..].iter().cloned());
                if followed != path {
                    return resolve(tree, exports, &followed, depth + 1).or(Some(candidate));
                }
            }
            return Some(candidate);
        }
        prefix -= 1;
    }
    None
}

/// Each `use` statement's tree (the text between `use` and `;`), with whether it is public.
fn use_statements(code: &str) -> Vec<(bool, String)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut search = 0;
    while let Some(offset) = code[search..].find("use ") {
        let at = search + offset;
        search = at + 4;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        // Only `use` in statement position: after a line start, `;`, `{`, `}` or `pub(…)`.
        let before = code[..at].trim_end();
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let statement = before.is_empty()
            || before.ends_with([';', '{', '}', ']'])
            || before.ends_with("pub")
            || before.ends_with(')');
        if !statement {
            continue;
        }
        let Some(end) = code[at..].find(';') else {
            break;
        };
        found.push((public, code[at + 4..at + end].trim().to_owned()));
        search = at + end;
    }
    found
}

/// Expands a use tree (`a::{b, c::{d as e, *}}`) into paths, each with its alias.
fn expand_use(tree: &str) -> Vec<(Vec<String>, Option<String>)> {
    let compact: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    expand_into(&compact, &[], &mut out);
    out
}

fn expand_into(tree: &str, prefix: &[String], out: &mut Vec<(Vec<String>, Option<String>)>) {
    let tree = tree.trim().trim_start_matches("::");
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut base = prefix.to_vec();
        base.extend(head);
        let close = tree.rfind('}').unwrap_or(tree.len());
        let inner = &tree[open + 1..close];
        for part in split_top_level(inner) {
            if part.trim() == "self" {
                out.push((base.clone(), None));
            } else if !part.trim().is_empty() {
                expand_into(&part, &base, out);
            }
        }
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((path, alias)) => (path, Some(alias.trim().to_owned())),
        None => (tree, None),
    };
    let mut full = prefix.to_vec();
    full.extend(
        path.split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    );
    if full.last().is_some_and(|last| last == "self") {
        full.pop();
    }
    out.push((full, alias));
}

/// Splits `a, b::{c, d}, e` at the commas outside braces.
fn split_top_level(inner: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

/// The strongly connected groups of more than one module (Tarjan's algorithm).
fn cycles_of(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct Search<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: HashMap<&'a Vec<String>, usize>,
        low: HashMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        next: usize,
        groups: Vec<Vec<Vec<String>>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, node: &'a Vec<String>) {
            self.index.insert(node, self.next);
            self.low.insert(node, self.next);
            self.next += 1;
            self.stack.push(node);
            self.on_stack.insert(node);
            let graph = self.graph;
            for target in graph.get(node).into_iter().flatten() {
                let Some((target, _)) = graph.get_key_value(target) else {
                    continue;
                };
                if !self.index.contains_key(target) {
                    self.visit(target);
                    let low = self.low[node].min(self.low[target]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(target) {
                    let low = self.low[node].min(self.index[target]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut group = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    group.push(top.clone());
                    if top == node {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.groups.push(group);
                }
            }
        }
    }
    let mut search = Search {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        groups: Vec::new(),
    };
    for node in graph.keys() {
        if !search.index.contains_key(node) {
            search.visit(node);
        }
    }
    search.groups
}
