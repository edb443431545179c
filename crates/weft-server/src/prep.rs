//! Request preparation off the async executor: rendering a chat template, tokenizing and
//! compiling a JSON schema take CPU time that grows with the request, and on one of the few
//! tokio workers they would stall every other connection, `/health` included. They run here
//! instead, on tokio's blocking threads, at most `max_concurrent` at a time; at most
//! `max_waiting` more wait their turn, and beyond that a request gets 503 at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use tokio::sync::Semaphore;

use crate::counted::Counted;
use crate::error::ApiError;

pub struct PrepPool {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl PrepPool {
    pub fn new(max_concurrent: usize, max_waiting: usize) -> PrepPool {
        PrepPool {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Requests waiting for a preparation slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Runs `job` on a blocking thread once a slot is free. The slot is held until the job
    /// ends, even if the caller stops waiting for it (its client left), so the bound holds.
    /// A job that panics fails its own request with a 500.
    pub async fn run<T, F>(&self, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let Some(_waiting) = Counted::within(&self.waiting, self.max_waiting) else {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many requests are being prepared; retry later",
                    ));
                };
                Arc::clone(&self.permits)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        });
        match task.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!("request preparation failed: {e}");
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error while preparing the request",
                ))
            }
        }
    }
}
