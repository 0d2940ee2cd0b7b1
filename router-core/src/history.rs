//! Policy versions: every accepted configuration change makes version n+1, kept with its time
//! and a comment; the last `versions_kept` documents can be read back and rolled back to.
//!
//! A version keeps the registry's contents as they were, not a document: its models, endpoints
//! and rules are shared with the registry and with the other versions, so that keeping 20
//! versions of 10,000 endpoints costs 20 lists of pointers, not 20 copies of every endpoint.
//! The document is made when it is asked for.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

use crate::registry::Contents;

/// One accepted configuration change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// The version (1 for the router's first policy).
    pub version: u64,
    /// When it was accepted, Unix ms.
    pub at_ms: u64,
    /// What it was: the caller's comment, or a summary of the change (`rule_upserted r1`).
    pub comment: String,
}

#[derive(Debug, Default)]
pub(crate) struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last: u64,
    kept: VecDeque<(PolicyVersion, Arc<Contents>)>,
}

impl History {
    /// Record `contents` as the next version; keep at most `keep` versions.
    pub(crate) fn record(&self, contents: Contents, at_ms: u64, comment: String, keep: usize) -> u64 {
        let mut h = self.inner.lock();
        h.last += 1;
        let version = h.last;
        h.kept.push_back((
            PolicyVersion {
                version,
                at_ms,
                comment,
            },
            Arc::new(contents),
        ));
        while h.kept.len() > keep.max(1) {
            h.kept.pop_front();
        }
        version
    }

    pub(crate) fn current(&self) -> u64 {
        self.inner.lock().last
    }

    pub(crate) fn list(&self) -> Vec<PolicyVersion> {
        self.inner.lock().kept.iter().map(|(v, _)| v.clone()).collect()
    }

    pub(crate) fn get(&self, version: u64) -> Option<Arc<Contents>> {
        self.inner
            .lock()
            .kept
            .iter()
            .find(|(v, _)| v.version == version)
            .map(|(_, p)| Arc::clone(p))
    }
}
