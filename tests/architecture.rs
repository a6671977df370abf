//! The layout keeps its promises: every source file says its one job in its
//! first line, no two modules import each other (directly or in a circle),
//! and the hub's "Event flow" map names events, files and methods that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `src/`, with its module path (`["hub", "events"]`).
fn modules() -> Vec<(PathBuf, Vec<String>)> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    let src = root().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|path| !path.ends_with("main.rs"))
        .map(|path| {
            let relative = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts
                .last()
                .is_some_and(|last| last == "mod" || last == "lib")
            {
                parts.pop();
            }
            (path, parts)
        })
        .collect()
}

/// The code of a file without its comments and the tests module.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path the file names through `crate::…`, `super::…` or `self::…`.
fn references(code: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let begin = from + at;
            from = begin + start.len();
            // Inside a longer path (`super::super::x`, `a::self::`): counted with it.
            if begin > 0
                && (bytes[begin - 1].is_ascii_alphanumeric()
                    || matches!(bytes[begin - 1], b'_' | b':'))
            {
                continue;
            }
            let path: Vec<&str> = code[begin..]
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap()
                .split("::")
                .filter(|part| !part.is_empty())
                .collect();
            // Where the path starts from: the crate, or this module (`own`
            // is the module, whether its file is `a/b.rs` or `a/b/mod.rs`);
            // each `super` is then one level up.
            let mut base: Vec<String> = match path[0] {
                "crate" => Vec::new(),
                _ => own.to_vec(),
            };
            let mut rest = &path[1..];
            if path[0] == "super" {
                base.pop();
                while rest.first() == Some(&"super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            base.extend(rest.iter().map(|part| part.to_string()));
            found.push(base);
        }
    }
    found
}

#[test]
fn every_source_file_states_its_job_first() {
    for (path, _) in modules() {
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("//! "),
            "{} does not open with a `//!` line saying what it is",
            path.display()
        );
    }
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let modules = modules();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(_, parts)| parts.clone()).collect();
    // Edges between siblings: a reference from a::b::c to a::d::e is one from
    // a::b to a::d; references up or down one's own line do not count.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (path, own) in &modules {
        let code = code_of(&fs::read_to_string(path).unwrap());
        for target in references(&code, own) {
            let Some(target) = (0..=target.len())
                .rev()
                .map(|len| target[..len].to_vec())
                .find(|prefix| known.contains(prefix))
            else {
                continue;
            };
            let common = own.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == own.len() || common == target.len() {
                continue;
            }
            edges
                .entry(own[..=common].to_vec())
                .or_default()
                .insert(target[..=common].to_vec());
        }
    }
    // Depth-first search for a path back to where it started.
    fn reaches(
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        from: &Vec<String>,
        goal: &Vec<String>,
        seen: &mut BTreeSet<Vec<String>>,
        trail: &mut Vec<String>,
    ) -> bool {
        for next in edges.get(from).into_iter().flatten() {
            trail.push(next.join("::"));
            if next == goal
                || (seen.insert(next.clone()) && reaches(edges, next, goal, seen, trail))
            {
                return true;
            }
            trail.pop();
        }
        false
    }
    for module in edges.keys() {
        let mut trail = vec![module.join("::")];
        assert!(
            !reaches(&edges, module, module, &mut BTreeSet::new(), &mut trail),
            "import circle: {}",
            trail.join(" -> ")
        );
    }
    assert!(edges.len() > 10, "the import graph was not read: {edges:?}");
}

#[test]
fn the_event_flow_map_names_what_exists() {
    let hub = fs::read_to_string(root().join("src/hub/mod.rs")).unwrap();
    let listened = fs::read_to_string(root().join("src/hub/events/mod.rs")).unwrap();
    let protocol = fs::read_to_string(root().join("src/protocol.rs")).unwrap();
    let rows: Vec<Vec<String>> = hub
        .lines()
        .filter_map(|line| line.strip_prefix("//! | `"))
        .map(|row| {
            format!("`{row}")
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect();
    // One row per event the hub listens for, by its wire name.
    let variants: Vec<&str> = listened
        .lines()
        .filter_map(|line| line.trim().strip_prefix("(Event::"))
        .map(|rest| rest.split(',').next().unwrap())
        .collect();
    assert_eq!(rows.len(), variants.len(), "one row per listened event");
    for variant in variants {
        let name_line = protocol
            .lines()
            .find(|line| line.trim().starts_with(&format!("Event::{variant} => \"")))
            .unwrap_or_else(|| panic!("no wire name for Event::{variant}"));
        let name = name_line.split('"').nth(1).unwrap();
        assert!(
            rows.iter().any(|row| row[0] == format!("`{name}`")),
            "the event flow map has no row for `{name}`"
        );
    }
    // Every file and method a row names exists.
    let source_of = |owner: &str| -> String {
        let path = match owner {
            "Desk" => "src/hub/desk/mod.rs",
            "Mailbox" => "src/hub/mailbox/mod.rs",
            "Sequencer" => "src/hub/sequencer/mod.rs",
            "Books" => "src/hub/sequencer/books.rs",
            "handlers" => "src/hub/handlers.rs",
            "http" => "src/hub/http.rs",
            other => panic!("the map names {other}, which this test does not know"),
        };
        fs::read_to_string(root().join(path)).unwrap()
    };
    for row in &rows {
        let file = row[2].trim_matches('`');
        assert!(
            root().join("src/hub").join(file).exists(),
            "the map names src/hub/{file}, which does not exist"
        );
        for cell in [&row[1], &row[3]] {
            for named in cell.split(", ") {
                let (owner, item) = named.trim_matches('`').split_once("::").unwrap();
                let source = source_of(owner);
                assert!(
                    source.contains(&format!("fn {item}("))
                        || source.contains(&format!("struct {item} "))
                        || source.contains(&format!("struct {item};")),
                    "the map names {owner}::{item}, which does not exist"
                );
            }
        }
    }
}

#[test]
fn paths_resolve_from_the_module_a_file_is() {
    let own = |path: &str| -> Vec<String> { path.split("::").map(str::to_owned).collect() };
    let resolve = |code: &str, module: &str| -> Vec<String> {
        references(code, &own(module))
            .into_iter()
            .map(|path| path.join("::"))
            .collect()
    };
    // `hub/sequencer/outbox.rs` is hub::sequencer::outbox; `hub/sequencer/mod.rs`
    // is hub::sequencer: `self` is the module, each `super` one level up.
    assert_eq!(
        resolve("use self::x::Y;", "hub::sequencer::outbox"),
        ["hub::sequencer::outbox::x::Y"]
    );
    assert_eq!(
        resolve("use super::replay::Z;", "hub::sequencer::outbox"),
        ["hub::sequencer::replay::Z"]
    );
    assert_eq!(
        resolve("use super::super::group::B;", "hub::sequencer::outbox"),
        ["hub::group::B"]
    );
    assert_eq!(
        resolve("use super::group::B;", "hub::sequencer"),
        ["hub::group::B"]
    );
    assert_eq!(
        resolve("use crate::hub::group::B;", "hub::sequencer::outbox"),
        ["hub::group::B"]
    );
}
