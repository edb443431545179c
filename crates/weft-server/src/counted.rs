//! A place in a bounded waiting line: a counter incremented while its holder waits and
//! decremented when the holder stops waiting, however it stops (served, or its client gone).

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    /// Takes a place if fewer than `limit` are taken.
    pub fn within(counter: &'a AtomicUsize, limit: usize) -> Option<Counted<'a>> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Counted(counter))
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
