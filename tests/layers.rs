//! The module graph of `src/`, read from the code's own paths (`use crate::…`, `super::…`, inline
//! `crate::a::b::C`), must have no cycle: no module imports one that imports it back, directly or through
//! others. A module is a file (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`); a path names the deepest
//! module it goes through, and a folder's `mod.rs` stands for the names it re-exports.
//!
//! The layers docs/architecture.md draws (its ```` ```layers ```` block, top layer first) must be true:
//! a module imports only from its own layer and the layers below it.
//!
//! Run alone with `cargo test --test layers`; `make lint` does. A failure prints every offending edge with
//! the line that makes it, so the fix starts from the right place.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One module: its path (`upstream::h1`) and its source with comments, strings and test modules removed.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    code: String,
}

impl Module {
    /// A folder's `mod.rs` (or the crate root), where `super` is the folder's parent.
    fn is_folder(&self) -> bool {
        self.file.file_name().is_some_and(|f| f == "mod.rs" || f == "lib.rs")
    }
}

/// The `pub use` statements of `code`, cut out: a re-export is a name for another module's item, not a
/// dependency of the module that re-exports it. Returns the code without them and what they export, as
/// (name, path written).
fn reexports(code: &str) -> (String, Vec<(String, String)>) {
    let mut rest = code;
    let mut kept = String::with_capacity(code.len());
    let mut exported = Vec::new();
    loop {
        let found = ["pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .filter_map(|start| rest.find(start).map(|at| (at, start.len())))
            .min();
        let Some((at, skip)) = found else { break };
        let Some(end) = rest[at..].find(';').map(|e| at + e) else {
            break;
        };
        kept.push_str(&rest[..at]);
        kept.extend(rest[at..end].chars().filter(|&c| c == '\n'));
        let statement = rest[at + skip..end].split_whitespace().collect::<Vec<_>>().join(" ");
        let statement = if ["crate::", "super::", "self::"]
            .iter()
            .any(|r| statement.starts_with(r))
        {
            statement
        } else {
            format!("self::{statement}")
        };
        let (paths, _) = expand(&statement.replace(" as ", "@").replace(' ', ""), 0);
        for path in paths {
            let (path, alias) = match path.split_once('@') {
                Some((path, alias)) => (path.to_owned(), alias.to_owned()),
                None => (path.clone(), path.rsplit("::").next().unwrap_or_default().to_owned()),
            };
            exported.push((alias, path));
        }
        rest = &rest[end + 1..];
    }
    kept.push_str(rest);
    (kept, exported)
}

fn modules(root: &Path) -> Vec<Module> {
    let mut files = Vec::new();
    collect(root, &mut files);
    files
        .into_iter()
        .filter_map(|file| {
            let relative = file.strip_prefix(root).ok()?.to_path_buf();
            let mut path: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            match path.last().map(String::as_str) {
                Some("lib") if path.len() == 1 => path.clear(),
                // The binary is a crate of its own; it only uses the library's public surface.
                Some("main") if path.len() == 1 => return None,
                Some("mod") => {
                    path.pop();
                }
                // Unit tests sit beside the code they test and use it; they are not part of the shape.
                Some("tests") => return None,
                _ => {}
            }
            let source = fs::read_to_string(&file).ok()?;
            Some(Module {
                path,
                code: without_tests(&strip(&source)),
                file,
            })
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The source with comments and the contents of string and char literals blanked, line breaks kept.
fn strip(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < bytes.len() {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if bytes[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(bytes, i) {
            out.push_str("\"\"");
            out.extend(bytes[i..end].iter().filter(|&&b| b == b'\n').map(|_| '\n'));
            i = end;
        } else if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                } else if bytes[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if bytes[i] == b'\'' && is_char_literal(rest) {
            let end = rest[1..].iter().position(|&b| b == b'\'').map_or(1, |p| p + 2);
            let end = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&b| b == b'\'').map_or(1, |p| p + 3)
            } else {
                end
            };
            out.push_str("' '");
            i += end;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// The end of a raw string literal (`r"…"`, `r#"…"#`, `br"…"`) starting at `i`, if one does.
fn raw_string_end(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    if bytes.get(j) == Some(&b'b') {
        j += 1;
    }
    if bytes.get(j) != Some(&b'r') || (i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) {
        return None;
    }
    j += 1;
    let hashes = bytes[j..].iter().take_while(|&&b| b == b'#').count();
    j += hashes;
    if bytes.get(j) != Some(&b'"') {
        return None;
    }
    let closing: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
    let body = j + 1;
    bytes[body..]
        .windows(closing.len())
        .position(|w| w == closing.as_slice())
        .map(|p| body + p + closing.len())
}

/// A quote that opens a char literal rather than a lifetime (`'a'`, `'\n'`, but not `'a` in `&'a str`).
fn is_char_literal(rest: &[u8]) -> bool {
    match rest.get(1) {
        Some(b'\\') => true,
        Some(_) => rest.get(2) == Some(&b'\'') || (rest.len() > 3 && !rest[1].is_ascii() && rest[1..].contains(&b'\'')),
        None => false,
    }
}

/// The code without `#[cfg(test)]` items (inline test modules and test-only helpers).
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item ends at its first `;` before any `{`, or at the brace that closes its first `{`.
        let mut depth = 0usize;
        let mut end = after.len();
        for (index, ch) in after.char_indices() {
            match ch {
                ';' if depth == 0 => {
                    end = index + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = index + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.extend(after[..end].chars().filter(|&c| c == '\n'));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every path the code names from a crate root, relative to its module, or through one of its `children`,
/// as written (`crate::a::b::C`, `super::x::Y`, `child::Z`), with `use` groups (`use crate::a::{b, c::D}`)
/// expanded, and the line each is on. A path through a child comes back as `self::child::…`.
fn paths(code: &str, children: &[String]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut i = 0;
    while i < bytes.len() {
        let boundary =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        if boundary {
            if let Some(child) = children.iter().find(|c| code[i..].starts_with(&format!("{c}::"))) {
                let (expanded, end) = expand(&format!("self::{}", &code[i..]), 0);
                let line = line_of(i);
                found.extend(expanded.into_iter().map(|p| (p, line)));
                i += end.saturating_sub("self::".len()).max(child.len());
                continue;
            }
        }
        let starts_path = ["crate::", "super::", "self::"]
            .iter()
            .any(|root| code[i..].starts_with(root))
            && boundary;
        if !starts_path {
            i += 1;
            continue;
        }
        let (expanded, end) = expand(code, i);
        let line = line_of(i);
        found.extend(expanded.into_iter().map(|p| (p, line)));
        i = end.max(i + 1);
    }
    found
}

/// The paths written at `start`, a group `{…}` expanded; and where the writing ends.
fn expand(code: &str, start: usize) -> (Vec<String>, usize) {
    let bytes = code.as_bytes();
    let mut i = start;
    let mut prefix = String::new();
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b':' | b'@')) {
        prefix.push(bytes[i] as char);
        i += 1;
    }
    if prefix.ends_with("::") && bytes.get(i) == Some(&b'{') {
        let mut depth = 0;
        let mut end = i;
        for (offset, &b) in bytes[i..].iter().enumerate() {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + offset;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &code[i + 1..end];
        let mut paths = Vec::new();
        for part in split_top_level(inner) {
            let part = part.trim();
            if part.is_empty() || part == "self" {
                paths.push(prefix.trim_end_matches("::").to_owned());
                continue;
            }
            let combined = format!("{prefix}{part}");
            let (inner_paths, _) = expand(&combined, 0);
            paths.extend(inner_paths);
        }
        return (paths, end + 1);
    }
    (vec![prefix.trim_end_matches("::").to_owned()], i)
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (index, ch) in text.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[from..index]);
                from = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[from..]);
    parts
}

/// Re-exported names, by the module that re-exports them: name -> the module that defines the item.
type Aliases = BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>;

/// The module a path written in `module` names: its deepest prefix that is a module, following
/// re-exports to the module that defines the item.
fn resolve(written: &str, module: &Module, known: &BTreeSet<Vec<String>>, aliases: &Aliases) -> Option<Vec<String>> {
    let is_folder = module.is_folder();
    let mut segments = written.split("::").filter(|s| !s.is_empty());
    let mut path: Vec<String> = match segments.next()? {
        "crate" => Vec::new(),
        "self" => {
            // `self` in `a/mod.rs` is `a`; in `a/b.rs` it is `a::b`.
            module.path.clone()
        }
        "super" => {
            // In a folder's mod.rs, super is the folder's parent; in a file, the file's folder.
            let mut base = module.path.clone();
            if is_folder || !base.is_empty() {
                base.pop();
            }
            base
        }
        _ => return None,
    };
    let mut rest: Vec<&str> = segments.collect();
    while rest.first() == Some(&"super") {
        path.pop();
        rest.remove(0);
    }
    let mut deepest = known.contains(&path).then(|| path.clone());
    for segment in rest {
        if let Some(defined) = aliases.get(&path).and_then(|names| names.get(segment)) {
            return Some(defined.clone());
        }
        path.push(segment.to_owned());
        if known.contains(&path) {
            deepest = Some(path.clone());
        } else {
            break;
        }
    }
    deepest
}

fn name(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

/// Edges between modules: from, to, and where (file:line) the first such path is written.
fn edges(root: &Path) -> BTreeMap<(String, String), String> {
    let mut modules = modules(root);
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    // Re-exports first, resolved without aliases (a re-export names the module that defines the item),
    // then every module's own paths through them.
    let mut aliases = Aliases::new();
    for module in &mut modules {
        let (code, exported) = reexports(&module.code);
        module.code = code;
        for (name, written) in exported {
            if let Some(target) = resolve(&written, module, &known, &Aliases::new()) {
                aliases.entry(module.path.clone()).or_default().insert(name, target);
            }
        }
    }
    let mut edges = BTreeMap::new();
    for module in &modules {
        let children: Vec<String> = known
            .iter()
            .filter(|p| p.len() == module.path.len() + 1 && p.starts_with(&module.path))
            .filter_map(|p| p.last().cloned())
            .collect();
        for (written, line) in paths(&module.code, &children) {
            let Some(target) = resolve(&written, module, &known, &aliases) else {
                continue;
            };
            // The crate root only declares modules; a module naming itself is no dependency.
            if target.is_empty() || target == module.path {
                continue;
            }
            let place = format!("{}:{line}: {written}", module.file.display());
            edges.entry((name(&module.path), name(&target))).or_insert(place);
        }
    }
    edges
}

/// Every cycle's modules, as strongly connected components with more than one module.
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
        graph.entry(to).or_default();
    }
    // Tarjan's algorithm, iteratively small enough to recurse: the graph has a few dozen nodes.
    struct Search<'a> {
        graph: &'a BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, node: &'a str) {
            let next = self.index.len();
            self.index.insert(node, next);
            self.low.insert(node, next);
            self.stack.push(node);
            self.on_stack.insert(node);
            for &to in &self.graph[node] {
                if !self.index.contains_key(to) {
                    self.visit(to);
                    let low = self.low[node].min(self.low[to]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(to) {
                    let low = self.low[node].min(self.index[to]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member.to_owned());
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut search = Search {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &node in graph.keys() {
        if !search.index.contains_key(node) {
            search.visit(node);
        }
    }
    search.found
}

fn describe(cycles: &[Vec<String>], edges: &BTreeMap<(String, String), String>) -> String {
    let mut text = String::new();
    for members in cycles {
        text.push_str(&format!("cycle among {}:\n", members.join(", ")));
        for ((from, to), place) in edges {
            if members.contains(from) && members.contains(to) {
                text.push_str(&format!("  {from} -> {to}   ({place})\n"));
            }
        }
    }
    text
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let edges = edges(&src());
    assert!(edges.len() > 50, "the module graph looks unread: {} edges", edges.len());
    let found = cycles(&edges);
    assert!(found.is_empty(), "import cycles in src/:\n{}", describe(&found, &edges));
}

/// The layer of each top-level module, from docs/architecture.md: 0 is the top.
fn layers() -> BTreeMap<String, usize> {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md")).unwrap_or_default();
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_default();
    let mut layers = BTreeMap::new();
    for (index, line) in block.lines().enumerate() {
        for module in line.split_whitespace() {
            layers.insert(module.trim_end_matches(".rs").trim_end_matches('/').to_owned(), index);
        }
    }
    layers
}

#[test]
fn every_module_imports_only_from_its_layer_and_below() {
    let layers = layers();
    assert!(layers.len() > 10, "no ```layers block found in docs/architecture.md");
    let edges = edges(&src());
    let layer_of = |module: &str| layers.get(module.split("::").next().unwrap_or_default()).copied();
    let mut unplaced = BTreeSet::new();
    let mut upward = Vec::new();
    for ((from, to), place) in &edges {
        match (layer_of(from), layer_of(to)) {
            (Some(from_layer), Some(to_layer)) if to_layer < from_layer => {
                upward.push(format!("  {from} -> {to}   ({place})"));
            }
            (Some(_), Some(_)) => {}
            (from_layer, to_layer) => {
                if from_layer.is_none() {
                    unplaced.insert(from.split("::").next().unwrap_or_default().to_owned());
                }
                if to_layer.is_none() {
                    unplaced.insert(to.split("::").next().unwrap_or_default().to_owned());
                }
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules docs/architecture.md places in no layer: {unplaced:?}"
    );
    assert!(upward.is_empty(), "imports from a higher layer:\n{}", upward.join("\n"));
}

#[test]
fn the_checker_sees_paths_in_every_form() {
    let code = strip(
        "use crate::a::{b, c::{D, e}};\n// crate::commented::Out\nfn f() { super::g::h(); let s = \"crate::quoted\"; crate::i::J::new() }\n",
    );
    let found: Vec<String> = paths(&code, &["g".to_owned()]).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        found,
        [
            "crate::a::b",
            "crate::a::c::D",
            "crate::a::c::e",
            "super::g::h",
            "crate::i::J::new"
        ]
    );
    let found: Vec<String> = paths("pub use state::{A, b::C}; x.state(); state::D", &["state".to_owned()])
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(found, ["self::state::A", "self::state::b::C", "self::state::D"]);
    assert_eq!(
        without_tests("a\n#[cfg(test)]\nmod tests {\n x { y }\n}\nb"),
        "a\n\n\n\n\nb"
    );
    let mut edges = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges.insert((from.to_owned(), to.to_owned()), String::new());
    }
    assert_eq!(cycles(&edges), [vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]]);
}
