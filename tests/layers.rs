//! The crate's layering, checked from its source: every module of `src/` is
//! in one layer (the table below, drawn in README's "Layout"), no module
//! imports from a layer above its own, and no files import each other in a
//! circle.
//!
//! A module's own submodules are part of it: a parent that declares and
//! re-exports its children (`mod frame; pub use frame::Frame;`) does not
//! close a circle with a child that takes the parent's types.
//!
//! An import is any path a file names outside its tests: `use` lines
//! (braces expanded) and paths written inline (`crate::x::y`,
//! `super::x`, a child module's name). A path is resolved to the deepest
//! module file that exists, so `crate::server::Config` is the server's
//! top-level file (`server/mod.rs`), not `server/config.rs`: a lower layer
//! must name the module that defines what it takes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first; a module may import from its own layer and
/// the ones before it. A module's layer is that of the longest prefix that
/// names it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "activity", "backoff", "cidr", "crypto", "protocol", "sys", "time", "traffic", "units",
            "wheel",
        ],
    ),
    ("client", &["client"]),
    ("data", &["server::config", "server::rate"]),
    ("connection", &["server::conn"]),
    ("counters", &["server::metrics"]),
    ("topics", &["server::topics"]),
    ("admission", &["server::admission"]),
    ("serving", &["server::serve"]),
    ("services", &["server::pubsub", "server::auth"]),
    ("admin", &["server::admin"]),
    (
        "top",
        &["server", "server::shutdown", "server::signals", "cli", ""],
    ),
];

/// Rust source with comments, string and character literals blanked out
/// (so that a path in a doc comment or a message is not an import) and
/// every item behind `#[cfg(test)]` removed.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(b' ');
            }
            b'r' if matches!(b.get(i + 1), Some(b'#') | Some(b'"'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                while b.get(j) == Some(&b'#') {
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
                let hashes = j - i - 1;
                let mut end = b"\"".to_vec();
                end.extend(std::iter::repeat_n(b'#', hashes));
                i = j + 1;
                while i < b.len() && !b[i..].starts_with(&end) {
                    i += 1;
                }
                i += end.len();
                out.extend_from_slice(b"\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.extend_from_slice(b"\"\"");
            }
            b'\'' => {
                // A character literal ('x', '\n', '\u{..}') or a lifetime.
                if b.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                    out.extend_from_slice(b"' '");
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                    out.extend_from_slice(b"' '");
                } else {
                    out.push(b'\'');
                    i += 1;
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).expect("stripping keeps UTF-8 boundaries");
    remove_test_items(&text)
}

/// Removes each `#[cfg(test)]` item: up to its `;` or its closing brace.
fn remove_test_items(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let b = item.as_bytes();
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, &c) in b.iter().enumerate().skip("#[cfg(test)]".len()) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// `use` trees expanded into paths: `a::{b, c::{d, e}}` gives `a::b`,
/// `a::c::d`, `a::c::e` (`self` names the prefix itself).
fn expand(tree: &str) -> Vec<String> {
    // Renames (`a::B as C`) go first: only the path matters.
    let mut words: Vec<&str> = Vec::new();
    let mut tokens = tree.split_whitespace();
    while let Some(token) = tokens.next() {
        if token == "as" {
            let renamed = tokens.next().unwrap_or("");
            words.push(&renamed[renamed.find([',', '}']).unwrap_or(renamed.len())..]);
        } else {
            words.push(token);
        }
    }
    let tree: String = words.concat();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').expect("a closing brace")];
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let mut paths = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        for sub in expand(part) {
            if sub == "self" {
                paths.push(prefix.trim_end_matches("::").to_string());
            } else {
                paths.push(format!("{prefix}{sub}"));
            }
        }
    }
    paths
}

struct Crate {
    /// Module path (`server::conn`) -> its file.
    modules: BTreeMap<String, PathBuf>,
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut modules = BTreeMap::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                    parts.pop();
                }
                if parts == ["main"] || parts.last().is_some_and(|p| p == "tests") {
                    // The binary (a crate of its own that uses the library)
                    // and unit tests kept in files of their own.
                    continue;
                }
                modules.insert(parts.join("::"), path);
            }
        }
        Crate { modules }
    }

    /// The module file a path names, for a path written in module `from`.
    fn resolve(&self, from: &str, path: &str) -> Option<String> {
        let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let mut base: Vec<&str> = if from.is_empty() {
            Vec::new()
        } else {
            from.split("::").collect()
        };
        match segs.first().copied() {
            Some("crate") => {
                base.clear();
                segs.remove(0);
            }
            Some("super") => {
                while segs.first() == Some(&"super") {
                    base.pop();
                    segs.remove(0);
                }
            }
            Some("self") => {
                segs.remove(0);
            }
            Some(first) => {
                // A child module named without `self::` (2018 paths).
                let child = join(&base, &[first]);
                if !self.modules.contains_key(&child) || child == from {
                    return None;
                }
            }
            None => return None,
        }
        let mut best = join(&base, &[]);
        for n in 1..=segs.len() {
            let candidate = join(&base, &segs[..n]);
            if self.modules.contains_key(&candidate) {
                best = candidate;
            } else {
                break;
            }
        }
        Some(best)
    }

    /// Every module each module imports, with the paths that make each
    /// import.
    fn imports(&self) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
        let mut all = BTreeMap::new();
        for (module, file) in &self.modules {
            let text = strip(&fs::read_to_string(file).unwrap());
            let mut paths = Vec::new();
            let mut rest = text.as_str();
            let mut code = String::new();
            // `use` trees first, then whatever paths the code writes inline.
            while let Some(at) = find_word(rest, "use") {
                code.push_str(&rest[..at]);
                let after = &rest[at + 3..];
                let end = after.find(';').unwrap_or(after.len());
                paths.extend(expand(&after[..end]));
                rest = &after[(end + 1).min(after.len())..];
            }
            code.push_str(rest);
            paths.extend(inline_paths(&code));
            let mut targets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for path in paths {
                if let Some(target) = self.resolve(module, &path)
                    && target != *module
                {
                    targets.entry(target).or_default().insert(path);
                }
            }
            all.insert(module.clone(), targets);
        }
        all
    }
}

fn join(base: &[&str], more: &[&str]) -> String {
    base.iter()
        .chain(more)
        .copied()
        .collect::<Vec<_>>()
        .join("::")
}

/// Where the word `word` starts in `text`, as a whole word.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let at = from + at;
        let before = at.checked_sub(1).map(|i| b[i]);
        let after = b.get(at + word.len()).copied();
        let ident = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
        if !ident(before) && !ident(after) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Paths written in code: every `a::b::c` whose first segment is lower
/// case (a module, `crate`, `super` or `self`), not preceded by `::`.
fn inline_paths(code: &str) -> Vec<String> {
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut paths = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !ident(b[i]) || (i > 0 && (ident(b[i - 1]) || b[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        loop {
            while end < b.len() && ident(b[end]) {
                end += 1;
            }
            if code[end..].starts_with("::") && b.get(end + 2).is_some_and(|&c| ident(c)) {
                end += 2;
            } else {
                break;
            }
        }
        let path = &code[start..end];
        if path.contains("::") && b[start].is_ascii_lowercase() {
            paths.push(path.to_string());
        }
        i = end.max(i + 1);
    }
    paths
}

/// The layer of a module: that of the longest prefix naming it.
fn layer_of(module: &str) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (layer, (_, prefixes)) in LAYERS.iter().enumerate() {
        for prefix in prefixes.iter() {
            let matches = module == *prefix
                || prefix.is_empty()
                || module.starts_with(&format!("{prefix}::"));
            if matches && best.is_none_or(|(len, _)| prefix.len() >= len) {
                best = Some((prefix.len(), layer));
            }
        }
    }
    best.map(|(_, layer)| layer)
}

fn src() -> Crate {
    Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let krate = src();
    let mut wrong = Vec::new();
    for (module, targets) in krate.imports() {
        let from = layer_of(&module).expect("every module has a layer");
        for (target, paths) in targets {
            let to = layer_of(&target).expect("every module has a layer");
            if to > from {
                wrong.push(format!(
                    "{module} ({}) -> {target} ({}): {:?}",
                    LAYERS[from].0,
                    LAYERS[to].0,
                    paths.iter().collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports from a layer above:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let krate = src();
    let imports = krate.imports();
    // Depth-first search, reporting the first circle found from each module.
    let mut circles = BTreeSet::new();
    for start in imports.keys() {
        if start.is_empty() {
            continue; // the crate root declares everything
        }
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((module, trail)) = stack.pop() {
            let owned = |target: &String| target.starts_with(&format!("{module}::"));
            let targets = imports.get(&module).into_iter().flat_map(|t| t.keys());
            for target in targets.filter(|t| !module.is_empty() && !owned(t)) {
                if target == start {
                    let mut circle = trail.clone();
                    circle.push(start.clone());
                    circles.insert(circle.join(" -> "));
                } else if seen.insert(target.clone()) {
                    let mut next = trail.clone();
                    next.push(target.clone());
                    stack.push((target.clone(), next));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_checker_resolves_and_expands_paths() {
    assert_eq!(
        expand("super::{a, b::{c, self}}"),
        ["super::a", "super::b::c", "super::b"]
    );
    assert_eq!(
        expand("super::{registry::Registry as Conns, Class}"),
        ["super::registry::Registry", "super::Class"]
    );
    let krate = src();
    assert_eq!(
        krate.resolve("server::conn::outbound", "super::id::ConnId"),
        Some("server::conn::id".into())
    );
    assert_eq!(
        krate.resolve("client::session", "crate::protocol::Message"),
        Some("protocol".into())
    );
    assert_eq!(krate.resolve("server", "std::io"), None);
    let stripped = strip(
        "// use crate::x;\nlet s = \"crate::y\";\n#[cfg(test)]\nmod tests { use crate::z; }\n",
    );
    assert!(!stripped.contains("crate::"), "{stripped}");
    assert_eq!(inline_paths("a::b::C(1) + Protocol::Line"), ["a::b::C"]);
    assert_eq!(layer_of("server::conn::outbound"), Some(3));
    assert_eq!(layer_of("server"), Some(LAYERS.len() - 1));
    assert_eq!(layer_of("backoff"), Some(0));
}

/// The built-in pub/sub service is written as a user would write it: it
/// takes only what the crate exports (the `Handler` and `Session` API, the
/// send errors, what a subscription resumed, identities, connection ids, the
/// topic grammar, presence's member ids and user form), never the topics table, the rate limits or the counters.
/// (`Session`'s fields are private to `server::serve`, so the compiler
/// holds the rest.)
#[test]
fn the_pubsub_service_takes_only_what_the_crate_exports() {
    let imports = src().imports();
    let taken: BTreeSet<&str> = imports["server::pubsub"]
        .values()
        .flatten()
        .map(|path| path.rsplit("::").next().unwrap())
        .collect();
    let exported = BTreeSet::from([
        "ConnId",
        "Handler",
        "Identity",
        "Resumed",
        "SendError",
        "Session",
        "parse_member_id",
        "personal_topic",
        "show_user",
        "valid_publish_id",
        "valid_topic",
    ]);
    assert!(
        taken.is_subset(&exported),
        "server::pubsub takes {:?}, beyond what the crate exports",
        taken.difference(&exported).collect::<Vec<_>>()
    );
}
