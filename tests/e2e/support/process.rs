//! The gatehouse binary: `gatehouse run` as a child process whose output lines a test can
//! wait for, one-shot commands such as `gatehouse check`, and the commit it was built from.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{PATIENCE, repo};

/// The gatehouse binary under test: the one this build made, or `GATEHOUSE_BIN` (to run
/// the suite, or one test, against another build, such as an earlier release).
pub fn binary() -> String {
    std::env::var("GATEHOUSE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gatehouse").to_owned())
}

/// How the child process is started.
enum Launch {
    Plain,
    /// Allowed at most this many open file descriptors.
    FdLimit(u32),
    /// Allowed to run on one CPU.
    OneCpu,
}

/// The first CPU this test process may run on (`Cpus_allowed_list`, such as `0-1` or
/// `2,5`), so pinning works inside a container that was given other CPUs than 0.
fn first_allowed_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status");
    list.trim()
        .split([',', '-'])
        .next()
        .expect("at least one allowed CPU")
        .to_owned()
}

/// The gatehouse binary, running as a child process.
pub struct Gatehouse {
    pub addr: SocketAddr,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Gatehouse {
    pub fn start(config: &str) -> Gatehouse {
        Gatehouse::start_with_env(config, &[])
    }

    /// Starts `gatehouse run` and waits for its `listening` line, which carries the
    /// address it bound.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gatehouse {
        Gatehouse::start_with(config, env, Launch::Plain)
    }

    /// Starts gatehouse allowed at most `files` open file descriptors.
    pub fn start_with_fd_limit(config: &str, files: u32) -> Gatehouse {
        Gatehouse::start_with(config, &[], Launch::FdLimit(files))
    }

    /// Starts gatehouse allowed to run on one CPU only (`taskset`), as in a pod whose
    /// CPU limit is one core or less.
    pub fn start_on_one_cpu(config: &str) -> Gatehouse {
        Gatehouse::start_with(config, &[], Launch::OneCpu)
    }

    /// Starts `gatehouse run` and waits for an output line containing `line` instead of
    /// `listening`: for a gatehouse that does not listen yet. `addr` is unset (port 0)
    /// until [`Self::wait_listening`] finds the listening line.
    pub fn start_until(config: &str, line: &str) -> Gatehouse {
        Gatehouse::spawn(config, &[], Launch::Plain, line)
    }

    /// Waits (bounded) for the `listening` line and sets `addr` from it.
    pub async fn wait_listening(&mut self) -> SocketAddr {
        let line = self.wait_for_line(&["msg=listening"]).await;
        self.addr = field(&line, "address")
            .parse()
            .expect("listening line has an address");
        self.addr
    }

    fn start_with(config: &str, env: &[(&str, &str)], launch: Launch) -> Gatehouse {
        Gatehouse::spawn(config, env, launch, "msg=listening")
    }

    fn spawn(config: &str, env: &[(&str, &str)], launch: Launch, ready: &str) -> Gatehouse {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.yaml");
        std::fs::write(&path, config).unwrap();
        let binary = binary();
        let mut command = match launch {
            Launch::Plain => Command::new(binary),
            Launch::FdLimit(files) => {
                let mut shell = Command::new("bash");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
                    .arg(binary);
                shell
            }
            Launch::OneCpu => {
                let mut taskset = Command::new("taskset");
                taskset.arg("-c").arg(first_allowed_cpu()).arg(binary);
                taskset
            }
        };
        command
            .arg("run")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start gatehouse");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (found, listening) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let collected = lines.clone();
        let wanted = ready.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Recorded before announced, so the line is in `output()` once start returns.
                collected.lock().unwrap().push(line.clone());
                // A JSON log writes the listening line as "msg":"listening".
                let json_listening =
                    wanted == "msg=listening" && line.contains(r#""msg":"listening""#);
                if line.contains(&wanted) || json_listening {
                    let _ = found.send(line);
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        let line = match listening.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gatehouse never logged {ready:?}; output:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        let addr = if line.contains("msg=listening") || line.contains(r#""msg":"listening""#) {
            field(&line, "address")
                .parse()
                .expect("listening line has an address")
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        Gatehouse {
            addr,
            child,
            lines,
            _dir: dir,
        }
    }

    /// The config file gatehouse was started with (rewrite it, then send SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("gatehouse.yaml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything gatehouse printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for an output line containing every one of `needles`.
    pub async fn wait_for_line(&self, needles: &[&str]) -> String {
        self.wait_for_nth_line(needles, 1).await
    }

    /// How many output lines so far contain every one of `needles`: read it before an
    /// action, then wait for the line that action adds with [`Self::wait_for_nth_line`].
    pub fn count_lines(&self, needles: &[&str]) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| matches(line, needles))
            .count()
    }

    /// Waits (bounded) for the `n`th output line (counting from 1) containing every one
    /// of `needles`, and returns it: how a test waits for the second reload rather than
    /// finding the first one again.
    pub async fn wait_for_nth_line(&self, needles: &[&str], n: usize) -> String {
        assert!(n >= 1, "lines are counted from 1");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|line| matches(line, needles))
                .nth(n - 1)
            {
                return line.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line #{n} with {needles:?} in gatehouse output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gatehouse did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn matches(line: &str, needles: &[&str]) -> bool {
    needles.iter().all(|needle| line.contains(needle))
}

/// The value of `key=` in a logfmt line, or of `"key":` in a JSON line (a value
/// without escapes).
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    if line.starts_with('{') {
        let start = line
            .find(&format!(r#""{key}":"#))
            .map(|at| at + key.len() + 3)
            .expect("field present");
        let rest = &line[start..];
        return match rest.strip_prefix('"') {
            Some(quoted) => &quoted[..quoted.find('"').unwrap()],
            None => &rest[..rest.find([',', '}']).unwrap()],
        };
    }
    let start = line
        .find(&format!(" {key}="))
        .map(|at| at + key.len() + 2)
        .expect("field present");
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"').unwrap()],
        None => rest.split(' ').next().unwrap(),
    }
}

/// Runs the gatehouse binary with `args` and returns its output.
pub fn gatehouse(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

/// The commit of the checkout the tests run in, as `build.rs` records it.
pub fn checkout_commit() -> String {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .expect("git runs");
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output).trim().to_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Peak resident memory of a process, from /proc.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// Resident memory of a process now, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
