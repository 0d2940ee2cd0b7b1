//! The key schema (docs/redis.md lists every key, its type, hash tag and lifetime).
//!
//! Every key starts with the configured prefix. Each atomic unit has its own hash tag, so that
//! on Redis Cluster a Lua script only touches keys of one slot and the load spreads over the
//! slots: the configuration is one unit (`{cfg}`), each head is one (`{head:<id>}`), and each
//! counter key the router builds carries its own tag (`{ws:<id>}:budget:...`).

/// The keys and channels of one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// Configuration version (string, integer).
    pub(crate) cfg_version: String,
    /// Configuration change log (stream, one entry per version, id `<version>-1`).
    pub(crate) cfg_log: String,
    /// The whole policy document and its version (hash: `version`, `policy`).
    pub(crate) cfg_snapshot: String,
    /// Channel of every change notification.
    pub(crate) changes: String,
    /// Channel of audit records.
    pub(crate) audit: String,
}

/// What a head's key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadKey {
    Status,
    Heartbeat,
    Cooldown,
}

impl HeadKey {
    fn suffix(self) -> &'static str {
        match self {
            HeadKey::Status => "status",
            HeadKey::Heartbeat => "hb",
            HeadKey::Cooldown => "cooldown",
        }
    }
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            cfg_version: format!("{prefix}{{cfg}}:version"),
            cfg_log: format!("{prefix}{{cfg}}:log"),
            cfg_snapshot: format!("{prefix}{{cfg}}:snapshot"),
            changes: format!("{prefix}changes"),
            audit: format!("{prefix}audit:routing:logs"),
        }
    }

    /// The idempotency key of one configuration change.
    pub(crate) fn cfg_op(&self, op: u64) -> String {
        format!("{}{{cfg}}:op:{op:016x}", self.prefix)
    }

    pub(crate) fn head(&self, endpoint_id: &str, what: HeadKey) -> String {
        format!("{}{{head:{endpoint_id}}}:{}", self.prefix, what.suffix())
    }

    /// The SCAN pattern of every head key.
    pub(crate) fn head_pattern(&self) -> String {
        let mut p = String::new();
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push_str("{head:*}:*");
        p
    }

    /// Parse a key found by [`Keys::head_pattern`] back into the endpoint and what it holds.
    pub(crate) fn parse_head<'a>(&self, key: &'a str) -> Option<(&'a str, HeadKey)> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix("{head:")?;
        let (id, what) = rest.rsplit_once("}:")?;
        let what = match what {
            "status" => HeadKey::Status,
            "hb" => HeadKey::Heartbeat,
            "cooldown" => HeadKey::Cooldown,
            _ => return None,
        };
        Some((id, what))
    }

    /// The Redis key of a router counter or limiter key: the prefix in front; a key without a
    /// hash tag of its own is wrapped in one, so that its flush id can share its slot.
    pub(crate) fn counter(&self, key: &str) -> String {
        if hash_tag(key).is_some() {
            format!("{}{key}", self.prefix)
        } else {
            format!("{}{{{key}}}", self.prefix)
        }
    }

    /// The idempotency key of one flush of the counters of hash tag `tag`.
    pub(crate) fn flush_id(&self, tag: &str, flush: u64) -> String {
        format!("{}{{{tag}}}:flush:{flush:016x}", self.prefix)
    }
}

/// The hash tag of a key as Redis Cluster computes it: what lies between the first `{` and the
/// first `}` after it, when that is not empty.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_redis_cluster_rules() {
        assert_eq!(hash_tag("{ws:a}:budget"), Some("ws:a"));
        assert_eq!(hash_tag("mr:{ws:a}:budget"), Some("ws:a"));
        assert_eq!(hash_tag("{}:x{y}"), None);
        assert_eq!(hash_tag("plain"), None);
        assert_eq!(hash_tag("a{b"), None);
    }

    #[test]
    fn counters_keep_or_get_a_tag() {
        let k = Keys::new("mr:");
        assert_eq!(k.counter("{ws:a}:budget:daily"), "mr:{ws:a}:budget:daily");
        assert_eq!(k.counter("global:rpm"), "mr:{global:rpm}");
        assert_eq!(hash_tag(&k.flush_id("ws:a", 7)), Some("ws:a"));
        assert_eq!(k.flush_id("ws:a", 7), "mr:{ws:a}:flush:0000000000000007");
    }

    #[test]
    fn head_keys_round_trip() {
        let k = Keys::new("p*:");
        let key = k.head("gpt}4-east", HeadKey::Heartbeat);
        assert_eq!(k.parse_head(&key), Some(("gpt}4-east", HeadKey::Heartbeat)));
        assert_eq!(k.head_pattern(), "p\\*:{head:*}:*");
        assert_eq!(hash_tag(&k.cfg_version), Some("cfg"));
    }
}
