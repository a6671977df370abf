//! Our own clients and the hub's command line with security on: tokens from
//! `caps token`, refusals that end a client with one clear line, and the
//! refusal to serve a network without a secret.

mod common;

use common::{Proc, caps_command, ids_after, start_hub_with};

fn secret_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("secret");
    std::fs::write(&path, "0123456789abcdef0123456789abcdef-test-secret\n").unwrap();
    owner_only(&path);
    path.to_str().unwrap().to_owned()
}

fn owner_only(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn mint(secret: &str, args: &[&str]) -> String {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--secret-file", secret]);
    let output = caps_command(&all).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn vendor_and_driver_with_tokens_complete_the_flow() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(&dir);
    let (hub, url) = start_hub_with(&["--port", "0", "--ephemeral", "--secret-file", &secret]);
    hub.wait_for_log("clients must present tokens");
    let driver_token = mint(&secret, &["driver", "--name", "bob"]);
    let _driver = Proc::caps(
        "driver",
        &[
            "driver",
            "--hub",
            &url,
            "--name",
            "bob",
            "--token",
            &driver_token,
            "--pickup-delay",
            "5ms",
            "--deliver-delay",
            "5ms",
        ],
    );
    hub.wait_for_log("driver name=bob");
    let vendor_token = mint(&secret, &["vendor", "--store", "acme", "--ttl", "1h"]);
    let mut vendor = caps_command(&[
        "vendor",
        "--hub",
        &url,
        "--store",
        "acme",
        "--interval",
        "10ms",
        "--count",
        "3",
    ]);
    vendor.env("CAPS_TOKEN", &vendor_token);
    let mut vendor = Proc::spawn("vendor", vendor);
    assert!(vendor.wait_exit().success(), "{}", vendor.describe());
    assert_eq!(
        ids_after(&vendor.stdout(), "VENDOR: Thank you for delivering ").len(),
        3
    );
}

#[test]
fn a_client_with_a_bad_token_exits_non_zero_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(&dir);
    let (_hub, url) = start_hub_with(&["--port", "0", "--ephemeral", "--secret-file", &secret]);
    for (token, expected) in [
        (None, "unauthorized: this hub requires a token"),
        (Some("junk"), "unauthorized: the token is malformed"),
    ] {
        let mut args = vec![
            "vendor",
            "--hub",
            &url,
            "--store",
            "acme",
            "--connect-timeout",
            "3s",
        ];
        if let Some(token) = token {
            args.extend_from_slice(&["--token", token]);
        }
        let output = caps_command(&args).env("RUST_LOG", "off").output().unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn the_hub_refuses_to_serve_a_network_without_a_secret_unless_told() {
    let output = caps_command(&["hub", "--host", "0.0.0.0", "--port", "0", "--ephemeral"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0 without --secret-file"),
        "{stderr}"
    );

    let (hub, _) = start_hub_with(&[
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--ephemeral",
        "--insecure",
    ]);
    hub.wait_for_log("anyone who can reach this port can act as any store or driver");
}

#[test]
fn tokens_need_the_secret_and_a_long_enough_one() {
    let output = caps_command(&["token", "viewer"])
        .env_remove("CAPS_SECRET_FILE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--secret-file"));

    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "too short").unwrap();
    owner_only(&short);
    let output = caps_command(&["token", "viewer", "--secret-file", short.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 32 bytes"));
}

#[test]
fn the_hub_holds_at_most_its_maximum_of_connections() {
    let (hub, url) = start_hub_with(&["--port", "0", "--ephemeral", "--max-connections", "2"]);
    let _first = Proc::caps("d1", &["driver", "--hub", &url, "--name", "one"]);
    let _second = Proc::caps("d2", &["driver", "--hub", &url, "--name", "two"]);
    hub.wait_for_log("driver name=one");
    hub.wait_for_log("driver name=two");
    let output = caps_command(&[
        "driver",
        "--hub",
        &url,
        "--name",
        "three",
        "--connect-timeout",
        "3s",
    ])
    .env("RUST_LOG", "off")
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("too_many_connections"));
}

#[test]
fn a_secret_file_others_may_read_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(&dir);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [
        vec![
            "hub",
            "--port",
            "0",
            "--ephemeral",
            "--secret-file",
            &secret,
        ],
        vec!["token", "viewer", "--secret-file", &secret],
    ] {
        let output = caps_command(&args).env("RUST_LOG", "off").output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.contains("may be read by others (mode 644)") && stderr.contains("chmod 600"),
            "{stderr}"
        );
    }
}

/// How many stderr lines of `proc` contain `needle`, waiting until there are `count`.
fn wait_for_log_count(proc: &Proc, needle: &str, count: usize) {
    let deadline = std::time::Instant::now() + common::WAIT;
    while proc
        .stderr()
        .iter()
        .filter(|line| line.contains(needle))
        .count()
        < count
    {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {count} lines with {needle:?}\n{}",
            proc.describe()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_token_ends_at_its_expiry_and_a_client_renews_it_from_its_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(&dir);
    let (hub, url) = start_hub_with(&["--port", "0", "--ephemeral", "--secret-file", &secret]);
    let token_file = dir.path().join("bob.token");
    std::fs::write(
        &token_file,
        mint(&secret, &["driver", "--name", "bob", "--ttl", "3s"]),
    )
    .unwrap();
    let driver = Proc::caps(
        "driver",
        &[
            "driver",
            "--hub",
            &url,
            "--name",
            "bob",
            "--token-file",
            token_file.to_str().unwrap(),
            "--pickup-delay",
            "5ms",
            "--deliver-delay",
            "5ms",
        ],
    );
    wait_for_log_count(&hub, "connected sid=", 1);
    // Whoever renews the file renews the driver's identity.
    std::fs::write(
        &token_file,
        mint(&secret, &["driver", "--name", "bob", "--ttl", "1h"]),
    )
    .unwrap();
    hub.wait_for_log("driver name=bob: its token expired");
    driver.wait_for_log("the hub is closing our connection: unauthorized: the token expired");
    wait_for_log_count(&hub, "driver name=bob transport=", 2);

    let vendor_token = mint(&secret, &["vendor", "--store", "acme"]);
    let mut vendor = Proc::caps(
        "vendor",
        &[
            "vendor",
            "--hub",
            &url,
            "--store",
            "acme",
            "--token",
            &vendor_token,
            "--interval",
            "10ms",
            "--count",
            "3",
        ],
    );
    assert!(vendor.wait_exit().success(), "{}", vendor.describe());
    assert_eq!(
        ids_after(&driver.stdout(), "DRIVER: delivered ").len(),
        3,
        "the renewed driver delivers"
    );

    // A client whose token expires and is not renewed stops, saying why.
    let stale_file = dir.path().join("eve.token");
    std::fs::write(
        &stale_file,
        mint(&secret, &["driver", "--name", "eve", "--ttl", "2s"]),
    )
    .unwrap();
    let mut stale = Proc::caps(
        "stale driver",
        &[
            "driver",
            "--hub",
            &url,
            "--name",
            "eve",
            "--token-file",
            stale_file.to_str().unwrap(),
        ],
    );
    assert_eq!(stale.wait_exit().code(), Some(1), "{}", stale.describe());
    assert!(
        stale.logged("the hub refused us: unauthorized: the token expired"),
        "{}",
        stale.describe()
    );
}
