//! `gatehouse check` and `gatehouse run` start-up: exit codes and messages that name
//! the file and the field.

use crate::support::pb::*;
use crate::support::*;

fn write(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("gatehouse.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn version_names_the_release_and_the_commit_built_from() {
    let output = gatehouse(&["--version"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).trim(),
        format!(
            "gatehouse {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            checkout_commit()
        )
    );
}

#[test]
fn check_accepts_the_quick_start_config() {
    let output = std::process::Command::new(crate::support::binary())
        .args(["check", "--config", "config/dev.yaml"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed = stdout(&output);
    assert_eq!(printed.lines().next(), Some("ok"), "{printed}");
    assert!(printed.contains("worst-case memory: "), "{printed}");
}

#[test]
fn check_warns_about_an_open_plaintext_listener_but_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let open = "listen: { address: 0.0.0.0:12018 }\n\
                tls: { enabled: false }\n\
                upstream: { address: 127.0.0.1:50051 }\n";
    let path = write(dir.path(), open);
    let output = gatehouse(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().next(), Some("ok"));
    assert_eq!(
        stderr(&output),
        format!(
            "{path}: warning: tls.enabled: false, listen.address 0.0.0.0:12018 is not a \
             loopback address and there is no auth section: anyone who reaches the port \
             calls the app unauthenticated\n"
        )
    );
    // On loopback (the quick start's h2c variant) there is nothing to warn about.
    let path = write(dir.path(), &open.replace("0.0.0.0", "127.0.0.1"));
    let output = gatehouse(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
}

#[test]
fn check_reports_every_problem_with_file_and_field_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DevConfig::new("127.0.0.1:50051".parse().unwrap());
    config.cert_file = "/nonexistent/server.crt".into();
    config.upstream = "app-without-port".to_owned();
    let config = config.yaml();
    let path = write(dir.path(), &config);
    let output = gatehouse(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(64));
    let errors = stderr(&output);
    assert!(
        errors.contains(&format!(
            "{path}: tls.cert_file: no such file: /nonexistent/server.crt"
        )),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{path}: upstream.address:")),
        "{errors}"
    );
}

#[test]
fn check_refuses_durations_longer_than_ten_years_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig::new("127.0.0.1:50051".parse().unwrap())
        .limit("handshake_timeout", "5124095576030431h")
        .yaml();
    let path = write(dir.path(), &config);
    let output = gatehouse(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(64), "{}", stdout(&output));
    assert!(
        stderr(&output).contains(
            "limits.handshake_timeout: duration \"5124095576030431h\" is longer than 87600h"
        ),
        "{}",
        stderr(&output)
    );
}

/// The longest durations `check` accepts are durations gatehouse can serve with: no
/// arithmetic on them overflows when connections and calls come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_with_every_timeout_at_the_longest_duration_check_accepts() {
    let app = App::start().await;
    let mut config = DevConfig::new(app.addr);
    for key in [
        "handshake_timeout",
        "keepalive_interval",
        "keepalive_timeout",
        "idle_timeout",
        "max_connection_age",
        "upstream_queue_timeout",
        "drain_timeout",
    ] {
        config = config.limit(key, "87600h");
    }
    let gatehouse = Gatehouse::start(&config.yaml());
    for _ in 0..3 {
        let reply = client(gatehouse.addr)
            .await
            .echo(EchoRequest {
                message: "long timeouts".into(),
                ..Default::default()
            })
            .await
            .expect("the call went through");
        assert_eq!(reply.into_inner().message, "long timeouts");
    }
    assert!(
        !gatehouse.output().contains("panicked"),
        "{}",
        gatehouse.output()
    );
}

#[test]
fn check_rejects_unknown_keys_naming_the_full_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DevConfig::new("127.0.0.1:50051".parse().unwrap());
    config
        .tls_extra
        .push(("verify".to_owned(), "yes".to_owned()));
    let config = config.yaml();
    let path = write(dir.path(), &config);
    let output = gatehouse(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("tls.verify: unknown field `verify`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_rejects_a_key_that_does_not_match_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DevConfig::new("127.0.0.1:50051".parse().unwrap());
    config.key_file = dev_cert("client-gateway.key");
    let config = config.yaml();
    let path = write(dir.path(), &config);
    let output = gatehouse(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("tls.key_file: does not match"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn run_with_a_bad_config_exits_64_and_a_busy_port_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "listen: {}\nupstream: { address: 127.0.0.1:50051 }\n",
    );
    let output = gatehouse(&["run", "--config", &path]);
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("listen"), "{}", stderr(&output));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = DevConfig::new("127.0.0.1:50051".parse().unwrap());
    config.listen = busy.local_addr().unwrap().to_string();
    let config = config.yaml();
    let path = write(dir.path(), &config);
    let output = gatehouse(&["run", "--config", &path]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("cannot listen"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn usage_errors_exit_64() {
    assert_eq!(gatehouse(&["run"]).status.code(), Some(64));
    assert_eq!(gatehouse(&["frobnicate"]).status.code(), Some(64));
    assert_eq!(gatehouse(&["--help"]).status.code(), Some(0));
}
