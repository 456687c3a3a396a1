//! moto's Secrets Manager API on loopback, and the Python that runs it (the venv of
//! `tests/infra/requirements.txt` that `scripts/test` sets `LONGPOLL_PYTHON` to).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::ready::wait_until;

/// The AWS settings a client of moto needs (any credentials do).
pub const AWS_ENVIRONMENT: [(&str, &str); 3] = [
    ("AWS_REGION", "eu-west-1"),
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
];

/// The Python with moto and boto3.
pub fn python() -> String {
    std::env::var("LONGPOLL_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// moto's server, stopped when dropped.
pub struct Moto {
    child: Child,
    /// Its URL, for `AWS_ENDPOINT_URL`.
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto's server on a free port and waits until it answers.
    pub async fn start() -> Self {
        let port = crate::server::free_port();
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python with moto (pip install -r tests/infra/requirements.txt)");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let probe = format!("{}/moto-api/", moto.endpoint);
        let what = "moto's server did not start (pip install -r tests/infra/requirements.txt)";
        wait_until(
            what,
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async { reqwest::get(&probe).await.is_ok() },
        )
        .await;
        moto
    }
}
