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
