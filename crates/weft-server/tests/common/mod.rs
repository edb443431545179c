//! What the HTTP test files share: a server on an ephemeral 127.0.0.1 port, stopped on
//! demand, and reading its Prometheus metrics.

// Each test binary uses its own part of these.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use weft_server::AppState;

/// `weft_server::serve` running on a loopback port until [`Listening::shutdown`].
pub struct Listening {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Listening {
    pub async fn start(state: Arc<AppState>) -> Listening {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(weft_server::serve(listener, state, async {
            let _ = rx.await;
        }));
        Listening {
            base,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Asks the server to stop and waits (at most `within`) for it to finish.
    pub async fn shutdown(mut self, within: Duration) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(within, self.done.take().unwrap())
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// The value of a metric line `name{...} value` (first match), if there is one.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
