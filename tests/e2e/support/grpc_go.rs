//! The grpc-go app (tests/apps/grpc-go), a second real app behind gatehouse: a grpc-go
//! server with its health service and reflection, on default settings.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use super::{PATIENCE, repo};

/// The grpc-go app, built by `tests/tools.sh` into `.tools/bin` (or named by `$GRPC_GO_APP`).
pub fn grpc_go_app_path() -> PathBuf {
    let path = std::env::var_os("GRPC_GO_APP")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/bin/grpc-go-app"));
    assert!(
        path.exists(),
        "grpc-go-app not found at {}: run `bash tests/run` (or `source tests/tools.sh`), which builds it",
        path.display()
    );
    path
}

/// The grpc-go app as a child process; its health status is set through its stdin.
pub struct GrpcGoApp {
    pub addr: SocketAddr,
    child: Child,
    control: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
}

impl GrpcGoApp {
    /// Starts the app on an ephemeral loopback port and waits for the address it prints.
    pub fn start() -> GrpcGoApp {
        let mut child = Command::new(grpc_go_app_path())
            .arg("127.0.0.1:0")
            // grpc-go then logs why it closes a connection (e.g. too many pings).
            .env("GRPC_GO_LOG_VERBOSITY_LEVEL", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start grpc-go-app");
        let control = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (found, listening) = mpsc::channel();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("listening ") {
                    let _ = found.send(address.to_owned());
                }
                collected.lock().unwrap().push(line);
            }
        });
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        let address = match listening.recv_timeout(PATIENCE) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!("grpc-go-app never printed its address");
            }
        };
        GrpcGoApp {
            addr: address.parse().expect("grpc-go-app prints HOST:PORT"),
            child,
            control,
            lines,
        }
    }

    /// Everything the app printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Sets the whole server's health status, which every Health/Watch on "" then reports.
    pub fn set_status(&mut self, status: &str) {
        writeln!(self.control, "\"\" {status}").expect("grpc-go-app reads its stdin");
        self.control.flush().expect("grpc-go-app reads its stdin");
    }
}

impl Drop for GrpcGoApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
