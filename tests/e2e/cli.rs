//! `gatehouse check` and `gatehouse run` start-up: exit codes and messages that name
//! the file and the field.

use crate::support::*;

fn write(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("gatehouse.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn check_accepts_the_quick_start_config() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
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
