//! The README must stay true to the code: its protocol table is the one in
//! `src/protocol.rs`, it documents every environment variable the CLI reads,
//! and it shows the load balancer configuration the tests run.

use std::fs;

fn read(path: &str) -> String {
    fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_readme_protocol_table_is_the_protocol_modules() {
    let readme = read("README.md");
    let protocol = read("src/protocol.rs");
    let table: Vec<&str> = protocol
        .lines()
        .filter_map(|line| line.strip_prefix("//! |"))
        .collect();
    assert!(
        table.len() >= 6,
        "the protocol table is missing from src/protocol.rs"
    );
    for row in table {
        assert!(
            readme.contains(&format!("|{row}")),
            "README lacks the protocol row |{row}"
        );
    }
}

#[test]
fn the_readme_documents_every_environment_variable() {
    let readme = read("README.md");
    let cli = read("src/cli/args.rs");
    let vars: Vec<&str> = cli
        .split("env = \"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(vars.len() >= 10);
    for var in vars {
        assert!(
            readme.contains(&format!("`{var}`")),
            "README does not document {var}"
        );
    }
}

#[test]
fn the_readme_shows_the_load_balancer_configuration_the_tests_run() {
    let readme = read("README.md");
    let config = read("deploy/haproxy.cfg");
    assert!(
        readme.contains(&format!("```text\n{config}```")),
        "README's HAProxy block differs from deploy/haproxy.cfg"
    );
}

#[test]
fn the_readme_lifecycle_is_the_lifecycle_table() {
    use caps::lifecycle::{OrderState, TRANSITIONS, markdown_table};

    let readme = read("README.md");
    let table = markdown_table();
    assert!(
        readme.contains(&table),
        "README's table of order states differs from src/lifecycle.rs; it should read:\n{table}"
    );
    // The diagram above it names every state and every report.
    let diagram = readme
        .split("## Dispatch")
        .nth(1)
        .and_then(|dispatch| dispatch.split("```text").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("README's Dispatch section has a diagram");
    for state in OrderState::ALL {
        assert!(diagram.contains(state.name()), "the diagram lacks {state}");
    }
    for (_, report, _) in TRANSITIONS {
        let word = report.label().trim_matches('`');
        let word = word.strip_suffix("al").unwrap_or(word);
        assert!(diagram.contains(word), "the diagram lacks {word}");
    }
}

#[test]
fn the_architecture_map_names_every_file_of_the_hub() {
    let map = read("docs/ARCHITECTURE.md");
    let hub = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/hub");
    let mut missing = Vec::new();
    let mut folders = vec![hub.clone()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !map.contains(&format!("{name}/")) {
                    missing.push(format!("{name}/"));
                }
                folders.push(path);
            } else if name.ends_with(".rs")
                && !["mod.rs", "tests.rs"].contains(&name.as_str())
                && !map.contains(&name)
            {
                missing.push(path.strip_prefix(&hub).unwrap().display().to_string());
            }
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md does not name {missing:?}"
    );
}

#[test]
fn the_readme_tests_table_names_every_test_file() {
    let readme = read("README.md");
    let tests = readme
        .split("## Tests")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a Tests section");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for folder in ["tests", "tests/js"] {
        for entry in fs::read_dir(root.join(folder)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let is_test =
                (folder == "tests" && name.ends_with(".rs")) || name.ends_with(".test.mjs");
            if is_test {
                assert!(
                    tests.contains(&format!("| `{folder}/{name}`")),
                    "README's Tests table lacks {folder}/{name}"
                );
            }
        }
    }
}
