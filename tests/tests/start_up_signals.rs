//! Signals sent while a binary starts, before it serves: SIGHUP and SIGUSR1 never end it (the
//! sidecar answers them once it serves), SIGTERM and SIGINT end it at once with exit 0.
//!
//! Start-up is held at a known point by an input file that is a named pipe: the sidecar's
//! `--config`, the control plane's `--admin-token-file`. The process waits in reading it
//! until the test writes it, and the test knows it is there because a non-blocking open for
//! writing succeeds only once a reader has the pipe open. No timing is guessed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use ficus_tests::client;
use ficus_tests::control::ControlPlane;
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::Upstream;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// `ENXIO` (Linux): opening a named pipe for writing without blocking when nobody reads it.
const ENXIO: i32 = 6;

/// Makes the named pipe `dir/name`; its path.
fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo (coreutils) runs");
    assert!(made.success());
    path
}

/// Opens the named pipe `fifo` for writing as soon as a process has it open for reading:
/// the process is then inside its start-up, reading it.
async fn writer_once_read(fifo: &Path) -> pipe::Sender {
    let started = Instant::now();
    loop {
        match pipe::OpenOptions::new().open_sender(fifo) {
            Ok(sender) => return sender,
            Err(error) if error.raw_os_error() == Some(ENXIO) => {}
            Err(error) => panic!("open {} for writing: {error}", fifo.display()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing opened {} for reading",
            fifo.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `text` into the pipe and closes it: the reader gets it, then end of file. A write
/// error (the reader is gone: the process died) is left to the caller's next check.
async fn write_and_close(mut writer: pipe::Sender, text: &str) {
    if let Err(error) = writer.write_all(text.as_bytes()).await {
        eprintln!("writing the pipe failed: {error}");
    }
}

/// Backends `a` and `b`; service `svc` routes to `target`.
fn config(a: SocketAddr, b: SocketAddr, target: &str) -> String {
    ficus_tests::svc_config(a, b, target, "")
}

/// Waits until the sidecar's `/ready` answers 200; the exit status if it exits first.
async fn sidecar_ready(sidecar: &mut Sidecar) -> Result<(), ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = sidecar.wait_exit_now() {
            return Err(status);
        }
        if let Ok(response) = client::get(sidecar.admin, "admin", "/ready").await {
            if response.status == 200 {
                return Ok(());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the sidecar was not ready within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// SIGHUP and SIGUSR1 while the sidecar reads its config at start: it survives, serves, and
/// the SIGHUP is answered once it does, as "read the config again" (the config file is read a
/// second time, and what it holds then is swapped in).
#[tokio::test]
async fn sighup_and_sigusr1_during_start_up_do_not_end_the_sidecar() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let options = SidecarOptions {
        config_fifo: true,
        ..SidecarOptions::default()
    };
    let mut sidecar = Sidecar::spawn("", options);
    let writer = writer_once_read(&sidecar.config_path).await;
    // Start-up is reading the config: nothing is bound or served yet.
    sidecar.signal("HUP");
    sidecar.signal("USR1");
    write_and_close(writer, &config(a.addr, b.addr, "a")).await;
    if let Err(status) = sidecar_ready(&mut sidecar).await {
        panic!("the sidecar exited on a signal sent during start-up: {status}");
    }
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!((response.status, response.text()), (200, "a".to_owned()));

    // The SIGHUP: the serving sidecar reads the config again (nothing else would: the file's
    // metadata has not changed since start-up read it).
    let writer = writer_once_read(&sidecar.config_path).await;
    write_and_close(writer, &config(a.addr, b.addr, "b")).await;
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!((response.status, response.text()), (200, "b".to_owned()));
    assert!(sidecar.wait_exit_now().is_none(), "the sidecar still runs");
}

/// SIGTERM or SIGINT while the sidecar reads its config at start: it exits at once with 0
/// (a clean shutdown; nothing was served), without waiting for the rest of start-up.
#[tokio::test]
async fn sigterm_or_sigint_during_start_up_exits_the_sidecar_with_0() {
    for signal in ["TERM", "INT"] {
        let options = SidecarOptions {
            config_fifo: true,
            ..SidecarOptions::default()
        };
        let mut sidecar = Sidecar::spawn("", options);
        // Kept open, never written: start-up cannot go on.
        let _writer = writer_once_read(&sidecar.config_path).await;
        sidecar.signal(signal);
        let status = sidecar.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{signal} during start-up: {status}"
        );
    }
}

/// SIGHUP and SIGUSR1 while `ficus-control` reads its admin token file at start: it survives,
/// serves, and logs them as ignored.
#[tokio::test]
async fn sighup_and_sigusr1_during_start_up_do_not_end_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = fifo(dir.path(), "admin.tokens");
    let token_file = tokens.display().to_string();
    let mut control = ControlPlane::spawn_with(&["--admin-token-file", &token_file]);
    let writer = writer_once_read(&tokens).await;
    control.signal("HUP");
    control.signal("USR1");
    write_and_close(writer, "admin-0123456789abcdef0123456789\n").await;
    if let Err(status) = control.wait_started().await {
        panic!(
            "ficus-control exited on a signal sent during start-up: {status}\n{}",
            control.log()
        );
    }
    for name in ["SIGHUP ignored", "SIGUSR1 ignored"] {
        let started = Instant::now();
        while !control.log().contains(name) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "ficus-control did not log {name:?}:\n{}",
                control.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let version = control.get_json("/v1/config").await;
    assert!(version.is_object(), "the API answers: {version}");
    assert!(control.exited().is_none(), "ficus-control still runs");
}

/// SIGTERM or SIGINT while `ficus-control` reads its admin token file at start: it exits at
/// once with 0, without opening its store or binding its ports.
#[tokio::test]
async fn sigterm_or_sigint_during_start_up_exits_the_control_plane_with_0() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let tokens = fifo(dir.path(), "admin.tokens");
        let token_file = tokens.display().to_string();
        let mut control = ControlPlane::spawn_with(&["--admin-token-file", &token_file]);
        let _writer = writer_once_read(&tokens).await;
        control.signal(signal);
        let status = control.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{signal} during start-up: {status}\n{}",
            control.log()
        );
        assert!(
            !control.data_dir().exists(),
            "the store was not opened:\n{}",
            control.log()
        );
    }
}
