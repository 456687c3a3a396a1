//! The module tree in `docs/architecture.md` is the code's: every file and folder under
//! `shared/src/` is in it, and everything in it exists.

use std::{collections::BTreeSet, fs, path::Path};

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
