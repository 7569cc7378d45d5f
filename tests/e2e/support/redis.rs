//! Redis, the store of global limits: Debian's `redis-server` (installed by
//! `tests/tools.sh`), started on loopback ports chosen at run time, alone or as a
//! 3-master cluster made with `redis-cli --cluster create`, and stopped by the tests
//! (dropping the handle stops every instance it started).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::PATIENCE;

/// `redis-server`, from `$REDIS_SERVER` or the PATH.
fn redis_server() -> PathBuf {
    tool("REDIS_SERVER", "redis-server")
}

/// `redis-cli`, from `$REDIS_CLI` or the PATH.
fn redis_cli() -> PathBuf {
    tool("REDIS_CLI", "redis-cli")
}

fn tool(variable: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} not found: run `bash tests/run` (tests/tools.sh installs Debian's redis-server and redis-tools)")
    })
}

/// A loopback port nobody listens on now; the caller binds it next (and retries on the
/// rare race with another process).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    /// The port speaks TLS only (`--tls-port`), with the development server certificate.
    tls: bool,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts an instance in `dir` with `extra` arguments on a free port; waits for
    /// "Ready to accept connections" (or, in cluster mode, the equivalent line).
    fn start_in(dir: &Path, extra: &[String], tls: bool) -> RedisServer {
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                tls,
                dir: dir.to_owned(),
                extra: extra.to_vec(),
                child: None,
            };
            if server.run() {
                return server;
            }
        }
        panic!("redis-server found no free port in 5 tries");
    }

    /// Runs (again) on this instance's port; false when the port was taken.
    fn run(&mut self) -> bool {
        let mut command = Command::new(redis_server());
        command.current_dir(&self.dir).args(["--bind", "127.0.0.1"]);
        if self.tls {
            command.args(["--port", "0", "--tls-port", &self.port.to_string()]);
            command.args(["--tls-auth-clients", "no", "--tls-cert-file"]);
            command
                .arg(super::dev_cert("server.crt"))
                .arg("--tls-key-file");
            command
                .arg(super::dev_cert("server.key"))
                .arg("--tls-ca-cert-file");
            command.arg(super::dev_cert("ca.crt"));
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        let mut child = command
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start redis-server");
        let stdout = child.stdout.take().unwrap();
        let (said, heard) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let ready = line.contains("Ready to accept connections");
                let taken = line.contains("Address already in use");
                if ready || taken {
                    let _ = said.send(ready);
                }
            }
        });
        match heard.recv_timeout(PATIENCE) {
            Ok(true) => {
                self.child = Some(child);
                true
            }
            Ok(false) => {
                let _ = child.kill();
                let _ = child.wait();
                false
            }
            Err(_) => {
                let _ = child.kill();
                panic!("redis-server on port {} never became ready", self.port);
            }
        }
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` for a TLS port.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Stops the instance the way a crash does (SIGKILL), keeping its port and files.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the instance answering (SIGSTOP): connections stay open, requests hang, as
    /// with a store that is overloaded or partitioned away.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused instance answer again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running redis-server").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts the instance again on the same port, with the same files.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running redis-server");
        assert!(
            self.run(),
            "port {} was taken while redis was down",
            self.port
        );
    }

    /// `redis-cli -p PORT ARGS…`, its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        assert!(!self.tls, "redis-cli is used on plaintext ports only");
        cli(self.port, args)
    }

    /// The `calls=` count of one command in `INFO commandstats` (0 when never called).
    pub fn command_calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new(redis_cli())
        .args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// A standalone Redis.
pub struct Redis {
    pub server: RedisServer,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let server = RedisServer::start_in(dir.path(), &[], false);
        Redis { server, _dir: dir }
    }

    /// A Redis that speaks TLS only, with the development server certificate (valid for
    /// 127.0.0.1) and `requirepass password`.
    pub fn start_tls(password: &str) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let extra = ["--requirepass".to_owned(), password.to_owned()];
        let server = RedisServer::start_in(dir.path(), &extra, true);
        Redis { server, _dir: dir }
    }
}

/// A Redis Cluster of three masters, no replicas; a stopped master's slots fail alone
/// (`cluster-require-full-coverage no`), as they do while a real cluster fails over.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let node = dir.path().join(format!("node{i}"));
                std::fs::create_dir(&node).unwrap();
                let extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &free_port().to_string(),
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "no",
                ]
                .map(str::to_owned);
                RedisServer::start_in(&node, &extra, false)
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(nodes[0].port, &create);
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.until_ok();
        cluster
    }

    /// Waits (bounded) until every running node reports `cluster_state:ok`.
    pub fn until_ok(&self) {
        let deadline = std::time::Instant::now() + PATIENCE;
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the cluster never formed"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    /// The seeds, as `limits.global.redis` lists them.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The index of the master that holds `key`.
    pub fn owner_of(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        // Each master lists the slot ranges it serves on its own `myself` line.
        self.nodes
            .iter()
            .position(|node| {
                let nodes = node.cli(&["CLUSTER", "NODES"]);
                nodes.lines().any(|line| {
                    line.contains("myself")
                        && line.split_whitespace().skip(8).any(|range| {
                            let (from, to) = range.split_once('-').unwrap_or((range, range));
                            let (from, to): (u16, u16) =
                                (from.parse().unwrap_or(1), to.parse().unwrap_or(0));
                            (from..=to).contains(&slot)
                        })
                })
            })
            .expect("some master holds every slot")
    }
}
