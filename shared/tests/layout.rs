//! The module tree in `docs/architecture.md` is the code's: every file and folder under
//! `shared/src/` is in it, and everything in it exists. And the layers it lists hold:
//! every module of `shared/src/` is in one, none imports from a higher one, and no two
//! import each other, however indirectly.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

const ARCHITECTURE: &str = include_str!("../../docs/architecture.md");

/// The paths the tree names, relative to `shared/src/` (folders end in `/`): each line
/// is a name, indented two spaces per level, then what it is.
fn documented() -> BTreeSet<String> {
    let tree = ARCHITECTURE
        .split("```\n")
        .find(|block| block.starts_with("shared/src/\n"))
        .expect("docs/architecture.md has a ```-block that starts with shared/src/");
    let mut folders: Vec<String> = Vec::new();
    let mut paths = BTreeSet::new();
    for line in tree.lines().skip(1) {
        let indent = line.len() - line.trim_start().len();
        assert!(
            indent % 2 == 0 && indent >= 2,
            "not indented by levels of two spaces: {line:?}"
        );
        let depth = indent / 2 - 1;
        assert!(depth <= folders.len(), "indented under no folder: {line:?}");
        folders.truncate(depth);
        let name = line.split_whitespace().next().expect("a name");
        let path = format!("{}{name}", folders.concat());
        if name.ends_with('/') {
            folders.push(name.to_owned());
        }
        assert!(paths.insert(path.clone()), "named twice: {path}");
    }
    paths
}

/// The Rust files and folders under `dir`, relative to `root`, folders ending in `/`.
fn on_disk(root: &Path, dir: &Path, found: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            found.insert(format!("{relative}/"));
            on_disk(root, &path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.insert(relative);
        }
    }
}

#[test]
fn the_architecture_tree_is_the_code() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut code = BTreeSet::new();
    on_disk(root, root, &mut code);
    let documented = documented();
    let missing: Vec<_> = code.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/architecture.md's tree of shared/src/ misses {missing:?} and names what is gone: {stale:?}"
    );
}

/// The layers `docs/architecture.md` lists under its "Layers" heading, lowest first: each is a
/// numbered line whose backticked names, before its colon, are the layer's modules.
fn layers() -> Vec<Vec<String>> {
    let section = ARCHITECTURE
        .split("\n#")
        .find(|section| {
            section
                .trim_start_matches('#')
                .trim_start()
                .starts_with("Layers\n")
        })
        .expect("docs/architecture.md has a \"Layers\" heading");
    section
        .lines()
        .filter(|line| {
            line.split_once(". ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .map(|line| {
            let names = line.split_once(':').map_or(line, |(names, _)| names);
            names
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// The crate's top-level modules that `source` (a file of module `module`) names through
/// `crate::` (or `super::`, when `top_level`, which there is the crate root). Comments
/// are left out: a doc link is not an import.
fn imported_by(source: &str, top_level: bool) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| {
            // The first `//` outside a string (not a URL's) starts the comment.
            let comment = line
                .match_indices("//")
                .find(|(at, _)| line[..*at].matches('"').count() % 2 == 0);
            comment.map_or(line, |(at, _)| &line[..at])
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut modules = BTreeSet::new();
    let prefixes: &[&str] = if top_level {
        &["crate::", "super::"]
    } else {
        &["crate::"]
    };
    for prefix in prefixes {
        for (at, _) in code.match_indices(prefix) {
            let preceded_by_word = code[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if preceded_by_word {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                modules.extend(group_heads(group));
            } else {
                modules.extend(head(rest));
            }
        }
    }
    modules.remove("self");
    modules
}

/// The first name of `path` (`metrics::cap_hit` gives `metrics`).
fn head(path: &str) -> Option<String> {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The first name of each item of a `use` group, `group` starting after its `{`.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                heads.extend(head(&group[at..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// Each top-level module of `shared/src/` (a file, or a folder and its files) and the
/// other top-level modules it imports.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = BTreeSet::new();
    on_disk(root, root, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files.iter().filter(|file| file.ends_with(".rs")) {
        let (module, top_level) = match file.split_once('/') {
            Some((folder, _)) => (folder.to_owned(), false),
            None => (file.trim_end_matches(".rs").to_owned(), true),
        };
        if module == "lib" {
            continue;
        }
        let source = fs::read_to_string(root.join(file)).unwrap();
        let mut imported = imported_by(&source, top_level);
        imported.remove(&module);
        graph.entry(module).or_default().extend(imported);
    }
    graph
}

/// Every import of `graph` that goes up `layers`, and every module in no layer.
fn layer_breaches(
    layers: &[Vec<String>],
    graph: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let layer_of = |module: &str| {
        layers
            .iter()
            .position(|layer| layer.iter().any(|m| m == module))
    };
    let mut breaches = Vec::new();
    for (module, imported) in graph {
        let Some(own) = layer_of(module) else {
            breaches.push(format!("{module} is in no layer"));
            continue;
        };
        for other in imported {
            match layer_of(other) {
                Some(theirs) if theirs > own => breaches.push(format!(
                    "{module} (layer {}) imports {other} (layer {})",
                    own + 1,
                    theirs + 1
                )),
                None => breaches.push(format!("{module} imports {other}, which is in no layer")),
                _ => {}
            }
        }
    }
    breaches
}

/// A circle of imports in `graph`, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            return Some(path[at..].to_vec());
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_from_a_higher_layer_or_in_a_circle() {
    let layers = layers();
    assert!(layers.len() > 1, "docs/architecture.md lists its layers");
    let graph = imports();
    let breaches = layer_breaches(&layers, &graph);
    assert!(
        breaches.is_empty(),
        "imports against the layers of docs/architecture.md: {breaches:#?}"
    );
    assert_eq!(circle(&graph), None, "modules that import each other");
    let listed: BTreeSet<&String> = layers.iter().flatten().collect();
    let stale: Vec<_> = listed.iter().filter(|m| !graph.contains_key(**m)).collect();
    assert!(
        stale.is_empty(),
        "docs/architecture.md's layers name modules that are gone: {stale:?}"
    );
}

/// The check catches what it is for: an upward import added to the lowest layer, as
/// `use` lines and as a path, is reported; a doc comment or a URL is not an import.
#[test]
fn an_upward_import_fails_the_check() {
    let layers = layers();
    let lowest = &layers[0][0];
    let highest = layers.last().unwrap()[0].clone();
    for added in [
        format!("use crate::{{event::Event, {highest}::{{self, serve}}}};"),
        format!("use crate::{highest}::serve;"),
        format!("fn f() {{ crate::{highest}::serve(); }}"),
        format!("use super::{highest};"),
    ] {
        assert!(imported_by(&added, true).contains(&highest), "{added}");
        let mut graph = imports();
        graph
            .get_mut(lowest)
            .unwrap()
            .extend(imported_by(&added, true));
        let breaches = layer_breaches(&layers, &graph);
        assert!(
            breaches
                .iter()
                .any(|breach| breach.starts_with(&format!("{lowest} (layer 1) imports {highest}"))),
            "{added}: {breaches:?}"
        );
    }
    assert!(
        imported_by(
            "// see crate::lambda::serve\nlet url = \"http://x\"; // crate::lambda",
            true
        )
        .is_empty()
    );
}

#[test]
fn two_modules_that_import_each_other_are_a_circle() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph
                .entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
            graph.entry((*to).to_owned()).or_default();
        }
        graph
    };
    assert_eq!(
        circle(&graph(&[
            ("config", "secrets"),
            ("secrets", "topology"),
            ("topology", "config")
        ])),
        Some(vec![
            "config".to_owned(),
            "secrets".to_owned(),
            "topology".to_owned()
        ])
    );
    assert_eq!(
        circle(&graph(&[
            ("config", "secrets"),
            ("config", "topology"),
            ("secrets", "topology")
        ])),
        None
    );
}
