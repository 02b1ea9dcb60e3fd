//! nginx as the backend: keep-alive reuse across client connections, forwarding headers,
//! h2load through the proxy with zero failures.

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};

use crate::common::*;

/// nginx on a listening socket this test bound (port 0) and handed over through the `NGINX`
/// environment variable (nginx's inherited-sockets mechanism): no port is guessed. With a
/// master process: nginx 1.22 crashes on inherited sockets with `master_process off`.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        let bin = require("nginx", "nginx-light");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  keepalive_requests 100000;\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200 \"nginx conn=$connection uri=$request_uri xff=$http_x_forwarded_for host=$http_host proto=$http_x_forwarded_proto\\n\"; }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let sock = socket2::SockRef::from(&listener);
        sock.set_cloexec(false).unwrap();
        let child = Command::new(bin)
            .env("NGINX", format!("{};", listener.as_raw_fd()))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        sock.set_cloexec(true).unwrap();
        // nginx has its own copy of the socket now.
        drop(listener);
        Nginx { child, port, _dir: dir }
    }

    async fn ready(&self) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = std::time::Instant::now();
        loop {
            let out =
                raw(addr, b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            if out.contains("nginx conn=") {
                return;
            }
            assert!(start.elapsed() < WAIT, "nginx did not answer on its socket: {out:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker, then exits; SIGKILL only if it does not.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = std::time::Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_backend_keepalive_and_h2load() {
    let nginx = Nginx::start();
    nginx.ready().await;
    let np = nginx.port;
    let proxy = Proxy::start(
        |p| {
            format!(
                r#"[[routes]]
name = "nginx"
match = {{ ports = [{p}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {np} }}], http = {{ }} }}
"#
            )
        },
        Opts::default(),
    )
    .await;
    // Three client connections, one after another: one nginx connection serves them all.
    let mut conns = Vec::new();
    for i in 0..3 {
        let out = curl(&["-H", "Host: site.test", &proxy.url(&format!("/p{i}?q={i}"))]).await;
        let text = stdout(&out);
        assert!(
            text.contains(&format!("uri=/p{i}?q={i} xff=127.0.0.1 host=site.test proto=http")),
            "{text}"
        );
        conns.push(text.split_whitespace().nth(1).unwrap_or("").to_owned());
    }
    assert!(conns.iter().all(|c| *c == conns[0]), "nginx connections: {conns:?}");

    let h2load = require("h2load", "nghttp2-client");
    let out = tokio::process::Command::new(h2load)
        .args(["-n", "3000", "-c", "8", "-m", "8", &proxy.url("/load")])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("3000 succeeded, 0 failed, 0 errored, 0 timeout"), "{text}");
    // HTTP/1.1 to nginx as well, with curl's keep-alive through several routes' worth of
    // requests on one connection.
    let out =
        curl(&["-w", "%{num_connects}\n", &proxy.url("/a"), &proxy.url("/b"), &proxy.url("/c")])
            .await;
    let text = stdout(&out);
    assert_eq!(text.matches("nginx conn=").count(), 3, "{text}");
    assert!(text.contains("uri=/c "), "{text}");
}
