//! A server process of a test's own: a free port, a data directory that
//! outlives restarts, SIGKILL on `kill` and on drop. `nats` and `redis` say
//! only how to start theirs.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Throwaway {
    pub(crate) port: u16,
    name: &'static str,
    dir: tempfile::TempDir,
    command: fn(port: u16, dir: &Path) -> Command,
    child: Option<Child>,
}

impl Throwaway {
    /// Starts `command(port, dir)` and waits until it accepts connections.
    pub(crate) fn start(name: &'static str, command: fn(u16, &Path) -> Command) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("pick a free port").port();
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut server = Throwaway { port, name, dir, command, child: None };
        server.launch();
        server
    }

    /// SIGKILL (no clean shutdown), then waits for the exit.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data directory.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn launch(&mut self) {
        let (name, port) = (self.name, self.port);
        let child =
            (self.command)(port, self.dir.path()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(
                |e| panic!("cannot start {name} ({e}); install it (Debian/Ubuntu: `apt-get install {name}`)"),
            );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // The port may still be held briefly by the previous process.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{name} exited at start ({status}); is port {port} taken?");
            }
            assert!(Instant::now() < deadline, "{name} did not listen on {port} within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        self.kill();
    }
}
