//! The yardstick: nginx with the Nchan module, an in-memory long-poll server, started on
//! loopback with a configuration of our own (config, pid, logs and temp paths in a
//! temporary directory), so every latency row can be read as a ratio to it.
//!
//! One channel per user, as our per-user queues: `GET /sub/<user>` is a long-poll
//! subscriber held up to the same 5.5 s (answered 408 when nothing came), which resumes
//! from the `Last-Modified` and `Etag` of its previous answer; `POST /pub/<user>`
//! publishes. Channels keep up to 100 messages for 30 minutes, as our queues do.
//! `apt-get install nginx-light libnginx-mod-nchan` installs both (Debian).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use longpoll_testkit::{ready::wait_until, server::free_port};

/// Where Debian installs the module.
const MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// A running nginx with Nchan; stopped, and its directory removed, when dropped.
pub struct Nchan {
    child: Child,
    dir: PathBuf,
    pub url: String,
    pub pid: u32,
}

impl Nchan {
    /// Why the yardstick cannot run here, if it cannot: nginx or the module missing.
    pub fn unavailable() -> Option<String> {
        if !Path::new(MODULE).exists() {
            return Some(format!(
                "{MODULE} not found (apt-get install nginx-light libnginx-mod-nchan)"
            ));
        }
        match Command::new("nginx").arg("-v").output() {
            Ok(output) if output.status.success() => None,
            _ => Some("nginx not found (apt-get install nginx-light)".to_owned()),
        }
    }

    /// Starts nginx in the foreground on a free loopback port, one worker process (the
    /// server it is compared with is one process too), and waits until it answers.
    pub async fn start() -> Nchan {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("longpoll-nchan-{port}"));
        std::fs::create_dir_all(&dir).expect("nchan's directory");
        let config = dir.join("nginx.conf");
        std::fs::write(&config, configuration(&dir, port)).expect("nchan's configuration");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let nchan = Nchan {
            pid: child.id(),
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let probe = format!("{}/pub/ready", nchan.url);
        let what = format!(
            "nginx did not start; see {}",
            nchan.dir.join("error.log").display()
        );
        wait_until(
            what,
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                let publish = client.post(&probe).body("ready").send().await;
                publish.is_ok_and(|answer| answer.status().is_success())
            },
        )
        .await;
        nchan
    }
}

/// A long-poll subscription's request: from the start of the channel's buffer, or past
/// the message that `resume` names (its `Last-Modified` and `Etag`).
pub fn subscribe(
    client: &reqwest::Client,
    url: &str,
    resume: Option<&(String, String)>,
) -> reqwest::RequestBuilder {
    let request = client.get(url);
    match resume {
        Some((last_modified, etag)) => request
            .header("if-modified-since", last_modified)
            .header("if-none-match", etag),
        None => request,
    }
}

/// Where the next subscription resumes after this answer: its `Last-Modified` and `Etag`.
pub fn resume_after(response: &reqwest::Response) -> Option<(String, String)> {
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    header("last-modified").zip(header("etag"))
}

impl Drop for Nchan {
    /// Stops nginx with SIGTERM, which its master passes on to the worker: a SIGKILL
    /// would leave the worker running, orphaned, its port still bound. SIGKILL only if
    /// it has not exited within two seconds.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let started = std::time::Instant::now();
        while matches!(self.child.try_wait(), Ok(None))
            && started.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn configuration(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        r#"load_module {MODULE};
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 32768; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  nchan_shared_memory_size 256M;
  server {{
    listen 127.0.0.1:{port} backlog=16384;
    location ~ ^/sub/(\w+)$ {{
      nchan_subscriber longpoll;
      nchan_channel_id $1;
      nchan_subscriber_timeout 5s; # whole seconds only; our hold is 5.5 s
    }}
    location ~ ^/pub/(\w+)$ {{
      nchan_publisher http;
      nchan_channel_id $1;
      nchan_message_buffer_length 100;
      nchan_message_timeout 30m;
    }}
  }}
}}
"#
    )
}
