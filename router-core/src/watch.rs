//! Dynamic reload: watch a policy file and swap it in when it changes.
//!
//! The watcher reads the file and compares a hash of its bytes with the last one it loaded
//! (robust to editors that replace the file and to timestamps of coarse resolution). A changed,
//! valid document is loaded as a new version (comment `reload <path>`); an invalid one leaves the
//! previous policy serving, and the router emits `policy_rejected` with every problem. A file
//! that cannot be read (mid-rename) is retried at the next poll.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Result;
use crate::events::Event;
use crate::policy::Policy;
use crate::router::Router;

/// Reloads a router's policy from a file when the file changes.
#[derive(Debug)]
pub struct PolicyWatcher {
    router: Router,
    path: PathBuf,
    last: Mutex<Option<u64>>,
}

impl PolicyWatcher {
    /// A watcher of `path` for `router`. Nothing is read until [`poll`](Self::poll) or
    /// [`spawn`](Self::spawn).
    pub fn new(router: Router, path: impl AsRef<Path>) -> Self {
        PolicyWatcher {
            router,
            path: path.as_ref().to_owned(),
            last: Mutex::new(None),
        }
    }

    /// Check the file once: `Ok(Some(version))` when a changed document was loaded, `Ok(None)`
    /// when nothing changed (or the file is unreadable for now), the document's error when it
    /// was rejected (the previous policy keeps serving; the same file is not retried until it
    /// changes again).
    pub fn poll(&self) -> Result<Option<u64>> {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return Ok(None);
        };
        let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        let mut last = self.last.lock();
        if *last == Some(hash) {
            return Ok(None);
        }
        *last = Some(hash);
        let source = format!("reload {}", self.path.display());
        let text = String::from_utf8_lossy(&bytes);
        let parsed = match self.path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Policy::from_yaml(&text),
            Some("json") => Policy::from_json(&text),
            _ => Policy::from_str_any(&text),
        };
        let policy = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.router.events().emit(&Event::PolicyRejected {
                    source,
                    problems: vec![crate::error::Problem {
                        path: String::new(),
                        reason: e.to_string(),
                    }],
                    at_ms: self.router.clock().now_ms(),
                });
                return Err(e);
            }
        };
        self.router.load_policy_with_comment(policy, &source).map(Some)
    }

    /// Poll every `interval` on a thread of its own until the handle is dropped.
    pub fn spawn(self, interval: Duration) -> WatchHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("model-router-policy-watch".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    let _ = self.poll();
                    std::thread::park_timeout(interval);
                }
            })
            .expect("spawn the policy watcher");
        WatchHandle {
            stop,
            thread: Some(thread),
        }
    }
}

/// Stops a spawned [`PolicyWatcher`] when dropped.
#[derive(Debug)]
pub struct WatchHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
