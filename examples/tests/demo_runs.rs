//! The demo end to end: `demo --peers 3` must finish within 90 s with exit code 0, and its
//! timeline must show the host migration and the listing after it.
//!
//! Flow: start the binary with piped output; poll for its exit (killing it at the
//! deadline); read its output; check the status and the lines.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest the demo may run.
const DEADLINE: Duration = Duration::from_secs(90);

#[test]
fn demo_with_three_peers_migrates_the_host_and_the_listing() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--peers", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    // Drain both pipes in threads, so a chatty child never blocks on a full pipe.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = stdout.join().expect("stdout thread");
    let err = stderr.join().expect("stderr thread");
    let status = status
        .unwrap_or_else(|| panic!("the demo did not finish within {DEADLINE:?}\n{out}\n{err}"));
    assert!(status.success(), "demo exited with {status}\n{out}\n{err}");

    let new_host = out
        .lines()
        .find(|l| l.contains("survivors agree: the new host is peer"))
        .unwrap_or_else(|| panic!("no agreement on a new host\n{out}"));
    assert!(
        !new_host.contains("new host is peer 1 "),
        "the killed host cannot be the new host: {new_host}"
    );
    let listing = out
        .lines()
        .find(|l| l.contains("listing after migration"))
        .unwrap_or_else(|| panic!("no listing after the migration\n{out}"));
    assert!(
        listing.contains("players 2/"),
        "players after the kill: {listing}"
    );
    assert!(listing.contains("= the new host"), "{listing}");
    assert!(out.contains("demo complete"), "{out}");
}
