//! API keys: made here (`mk_live_` + 43 base62 characters, 256 bits), stored only as their
//! SHA-256 in the `mochi_keys` bucket, and known to every gateway replica through a watch of
//! that bucket (a creation or a revocation reaches each replica within milliseconds). A key
//! a replica does not know yet (made a moment ago through another replica) is read from the
//! bucket's leader, within a small budget of such reads per second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use protocol::{TenantId, now_ms};
use serde::{Deserialize, Serialize};

use super::role::Role;

/// The prefix of every key this service issues (recognisable in a leak scan).
pub const KEY_PREFIX: &str = "mk_live_";
/// Random characters after the prefix: 43 base62 characters carry 256 bits.
const KEY_RANDOM_CHARS: usize = 43;
/// Prefix of API-key entries in `mochi_keys`; the rest of the entry's key is the key's hash.
const ENTRY_PREFIX: &str = "k.";
/// Characters of a key shown in listings (the prefix and four random characters).
const SHOWN_CHARS: usize = 12;
/// Wait before watching the bucket again after the watch ended.
const RETRY: Duration = Duration::from_secs(1);
/// Most compare-and-set rounds a revocation tries.
const MAX_TRIES: u32 = 16;
/// Reads of unknown keys from the bucket's leader per second, per replica (and the burst):
/// a new key is unknown to a replica only until its watch delivers it, so honest callers
/// need a few; a flood of made-up keys gets no more NATS requests than this.
const MISS_READS_PER_SECOND: f64 = 20.0;
/// How long a key the leader did not have is answered as unknown without asking again (a
/// key is stored before anyone holds it, so an absent one does not appear later).
const ABSENT_FOR: Duration = Duration::from_secs(60);
/// Most keys remembered as absent (beyond it, expired ones are dropped, then all).
const MAX_ABSENT: usize = 10_000;
/// Longest wait for the leader's answer about an unknown key.
const MISS_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong managing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key store (NATS) failed.
    #[error("the key store is unreachable: {0}")]
    Store(String),
    /// A stored record is not a key record this build can read.
    #[error("the stored key record {entry} is unreadable")]
    Unreadable {
        /// The bucket entry.
        entry: String,
    },
    /// No key has this id.
    #[error("no API key has the id {0}; `mochi keys list` shows the ids")]
    NotFound(String),
    /// The system's random source failed.
    #[error(transparent)]
    Random(#[from] protocol::random::RandomError),
    /// The key changed too often while being revoked.
    #[error("key {0} is changing too fast; retry")]
    Contended(String),
}

/// A stored API key: everything but the key itself, which only its holder has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The key's public id (`key_…`), used to list and revoke it and in logs.
    pub id: String,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
    /// The key's first characters, so that its holder recognises it in a listing.
    pub shown: String,
    /// The tenant whose jobs the key acts on.
    pub tenant: TenantId,
    /// What the key may do.
    pub role: Role,
    /// A name for people (who holds it, what for).
    pub name: String,
    /// When it was made, ms since the epoch.
    pub created_at_ms: u64,
    /// When it stops working, ms since the epoch (`None`: never).
    pub expires_at_ms: Option<u64>,
    /// When it was revoked (`None`: it was not).
    pub revoked_at_ms: Option<u64>,
    /// When it last authenticated a request (written at most once a minute per replica).
    pub last_used_at_ms: Option<u64>,
}

impl ApiKeyRecord {
    /// Why the key cannot be used at `now_ms`, as a sentence for the caller; `None` if it can.
    pub fn refusal(&self, now_ms: u64) -> Option<String> {
        if self.revoked_at_ms.is_some() {
            return Some(format!(
                "API key {} was revoked; ask an admin of tenant {} for a new one",
                self.id, self.tenant
            ));
        }
        match self.expires_at_ms {
            Some(expiry) if expiry <= now_ms => Some(format!(
                "API key {} expired; ask an admin of tenant {} for a new one",
                self.id, self.tenant
            )),
            _ => None,
        }
    }
}

/// A key just made: the secret (shown once) and what is stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The key itself; it is stored nowhere.
    pub secret: String,
    /// Its stored record.
    pub record: ApiKeyRecord,
}

/// Hex SHA-256 of a key.
pub fn hash_key(key: &str) -> String {
    protocol::codec::hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref())
}

/// Whether `text` has the shape of one of our keys (cheap check before hashing).
pub fn looks_like_key(text: &str) -> bool {
    text.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_RANDOM_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The `mochi_keys` bucket, for the operations on keys (the CLI and the admin routes).
#[derive(Clone)]
pub struct KeyStore {
    kv: kv::Store,
}

impl KeyStore {
    /// The key operations on this bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Makes and stores a key; the secret is in the answer and nowhere else.
    pub async fn create(
        &self,
        tenant: TenantId,
        role: Role,
        name: &str,
        expires_in: Option<Duration>,
    ) -> Result<NewKey, KeyError> {
        let secret = format!(
            "{KEY_PREFIX}{}",
            protocol::random::base62(KEY_RANDOM_CHARS)?
        );
        let now = now_ms();
        let record = ApiKeyRecord {
            id: format!("key_{}", protocol::random::base62(16)?),
            hash: hash_key(&secret),
            shown: secret.chars().take(SHOWN_CHARS).collect(),
            tenant,
            role,
            name: name.to_owned(),
            created_at_ms: now,
            expires_at_ms: expires_in
                .map(|d| now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
            revoked_at_ms: None,
            last_used_at_ms: None,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| KeyError::Store(e.to_string()))?;
        self.kv
            .create(entry_key(&record.hash), bytes.into())
            .await
            .map_err(|e| KeyError::Store(e.to_string()))?;
        audit_key(&record, "key_created");
        Ok(NewKey { secret, record })
    }

    /// The record of `secret`, if it is a stored key.
    pub async fn find(&self, secret: &str) -> Result<Option<ApiKeyRecord>, KeyError> {
        let entry = self
            .kv
            .get(entry_key(&hash_key(secret)))
            .await
            .map_err(|e| KeyError::Store(e.to_string()))?;
        Ok(entry.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Every key record (revoked and expired ones too), oldest first.
    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>, KeyError> {
        let mut records: Vec<ApiKeyRecord> = self
            .entries()
            .await?
            .into_iter()
            .map(|(record, _)| record)
            .collect();
        records.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(records)
    }

    /// Revokes the key `id` (it stays listed, marked revoked); revoking twice is harmless.
    pub async fn revoke(&self, id: &str) -> Result<ApiKeyRecord, KeyError> {
        for _ in 0..MAX_TRIES {
            let (mut record, revision) = self
                .entries()
                .await?
                .into_iter()
                .find(|(record, _)| record.id == id)
                .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
            if record.revoked_at_ms.is_some() {
                return Ok(record);
            }
            record.revoked_at_ms = Some(now_ms());
            let bytes = serde_json::to_vec(&record).map_err(|e| KeyError::Store(e.to_string()))?;
            match self
                .kv
                .update(entry_key(&record.hash), bytes.into(), revision)
                .await
            {
                Ok(_) => {
                    audit_key(&record, "key_revoked");
                    return Ok(record);
                }
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(KeyError::Store(error.to_string())),
            }
        }
        Err(KeyError::Contended(id.to_owned()))
    }

    /// Every readable key record with its revision (unreadable ones are logged and skipped).
    async fn entries(&self) -> Result<Vec<(ApiKeyRecord, u64)>, KeyError> {
        let store_error = |e: &dyn std::fmt::Display| KeyError::Store(e.to_string());
        let mut names = self.kv.keys().await.map_err(|e| store_error(&e))?;
        let mut out = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| store_error(&e))?;
            if !name.starts_with(ENTRY_PREFIX) {
                continue;
            }
            let Some(entry) = self.kv.entry(&name).await.map_err(|e| store_error(&e))? else {
                continue;
            };
            if entry.operation != Operation::Put {
                continue;
            }
            match serde_json::from_slice::<ApiKeyRecord>(&entry.value) {
                Ok(record) => out.push((record, entry.revision)),
                Err(_) => tracing::warn!(entry = %name, "unreadable API key record skipped"),
            }
        }
        Ok(out)
    }

    /// Notes a use of the key (compare-and-set: never undoes a concurrent revocation).
    async fn touch(&self, hash: &str, now: u64) {
        let Ok(Some(entry)) = self.kv.entry(entry_key(hash)).await else {
            return;
        };
        let Ok(mut record) = serde_json::from_slice::<ApiKeyRecord>(&entry.value) else {
            return;
        };
        record.last_used_at_ms = Some(now);
        if let Ok(bytes) = serde_json::to_vec(&record)
            && let Err(error) = self
                .kv
                .update(entry_key(hash), bytes.into(), entry.revision)
                .await
        {
            tracing::debug!(key_id = %record.id, %error, "last-used time not written");
        }
    }
}

fn entry_key(hash: &str) -> String {
    format!("{ENTRY_PREFIX}{hash}")
}

/// An audit line for a key change (target `mochi::audit`).
fn audit_key(record: &ApiKeyRecord, event: &'static str) {
    tracing::info!(target: "mochi::audit", event, key_id = %record.id, tenant = %record.tenant, role = %record.role, "API key changed");
}

/// Every gateway's copy of the key records, by hash, kept current by a watch.
#[derive(Clone)]
pub struct KeyCache {
    records: Arc<RwLock<HashMap<String, (ApiKeyRecord, u64)>>>,
    /// When this replica last wrote each key's last-used time, ms.
    touched: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    /// The bucket (`None`: not opened; every key is then unknown and `start` fails).
    store: Option<KeyStore>,
    touch_interval_ms: u64,
    /// Unknown keys read from the leader: the budget and the answers "absent".
    misses: Arc<Mutex<Misses>>,
}

impl KeyCache {
    /// An empty cache over `kv`; [`KeyCache::start`] fills it and keeps it current.
    pub fn new(kv: Option<kv::Store>, touch_interval: Duration) -> Self {
        Self {
            records: Arc::default(),
            touched: Arc::default(),
            store: kv.map(KeyStore::new),
            touch_interval_ms: u64::try_from(touch_interval.as_millis()).unwrap_or(u64::MAX),
            misses: Arc::new(Mutex::new(Misses::new(Instant::now()))),
        }
    }

    /// Loads every key, then watches the bucket for as long as the cache lives.
    pub async fn start(&self) -> Result<tokio::task::JoinHandle<()>, KeyError> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| KeyError::Store("the mochi_keys bucket is not open".to_owned()))?;
        // Changes from now on are watched first, then the keys there are now are read: what
        // changes while they are read arrives through the watch too (the newer revision
        // wins), and nothing is read twice at start-up.
        let updates = store
            .kv
            .watch(format!("{ENTRY_PREFIX}>"))
            .await
            .map_err(|e| KeyError::Store(e.to_string()))?;
        for (record, revision) in store.entries().await? {
            self.apply(record, revision);
        }
        let records = Arc::downgrade(&self.records);
        let kv = store.kv.clone();
        Ok(tokio::spawn(watch(records, kv, updates)))
    }

    /// The record of `key`, if it is one of ours and this replica knows it (its watch
    /// delivered it).
    pub fn lookup(&self, key: &str) -> Option<ApiKeyRecord> {
        if !looks_like_key(key) {
            return None;
        }
        self.known(&hash_key(key))
    }

    /// The record of `key`, if it is one of ours: this replica's copy, or else the bucket
    /// leader's (a key made a moment ago through another replica), read at most
    /// 20 times a second (`MISS_READS_PER_SECOND`) and not again for a key the leader did not
    /// have. An error only when the leader was asked and did not answer.
    pub async fn find(&self, key: &str) -> Result<Option<ApiKeyRecord>, KeyError> {
        if !looks_like_key(key) {
            return Ok(None);
        }
        let hash = hash_key(key);
        if let Some(record) = self.known(&hash) {
            return Ok(Some(record));
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        if !self.misses().may_read(&hash, Instant::now()) {
            return Ok(None);
        }
        let entry = entry_key(&hash);
        let latest = tokio::time::timeout(
            MISS_READ_TIMEOUT,
            protocol::shared_value::get_latest(&store.kv, &entry),
        )
        .await
        .map_err(|_| KeyError::Store("the bucket's leader did not answer in time".to_owned()))?
        .map_err(|e| KeyError::Store(e.to_string()))?;
        let Some((bytes, revision)) = latest else {
            self.misses().absent(hash, Instant::now());
            return Ok(None);
        };
        let Some(record) = serde_json::from_slice::<ApiKeyRecord>(&bytes)
            .ok()
            .filter(|record| record.hash == hash)
        else {
            // As the watch does: an unreadable record is no key.
            tracing::warn!(%entry, "unreadable API key record skipped");
            self.misses().absent(hash, Instant::now());
            return Ok(None);
        };
        self.apply(record.clone(), revision);
        Ok(Some(record))
    }

    fn known(&self, hash: &str) -> Option<ApiKeyRecord> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        records.get(hash).map(|(record, _)| record.clone())
    }

    fn misses(&self) -> std::sync::MutexGuard<'_, Misses> {
        self.misses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a use of `record`'s key: its last-used time is written in the background, at
    /// most once per `touch_interval` per replica.
    pub fn used(&self, record: &ApiKeyRecord) {
        let now = now_ms();
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            let last = touched.get(&record.hash).copied().unwrap_or(0);
            if now.saturating_sub(last) < self.touch_interval_ms {
                return;
            }
            touched.insert(record.hash.clone(), now);
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        let hash = record.hash.clone();
        // Fire and forget: bounded by one write per key per interval.
        drop(tokio::spawn(async move { store.touch(&hash, now).await }));
    }

    fn apply(&self, record: ApiKeyRecord, revision: u64) {
        apply(&self.records, record, revision);
    }
}

/// The reads of unknown keys from the leader: a token bucket of [`MISS_READS_PER_SECOND`],
/// and the keys the leader did not have, each until its time is up.
struct Misses {
    /// Reads left now (fractions accrue).
    tokens: f64,
    /// When `tokens` was last topped up.
    refilled_at: Instant,
    /// Hashes the leader did not have, with when that answer expires.
    absent: HashMap<String, Instant>,
}

impl Misses {
    fn new(now: Instant) -> Self {
        Self {
            tokens: MISS_READS_PER_SECOND,
            refilled_at: now,
            absent: HashMap::new(),
        }
    }

    /// Whether to ask the leader for `hash` now (it takes one read from the budget).
    fn may_read(&mut self, hash: &str, now: Instant) -> bool {
        if self.absent.get(hash).is_some_and(|until| *until > now) {
            return false;
        }
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * MISS_READS_PER_SECOND).min(MISS_READS_PER_SECOND);
        self.refilled_at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Notes that the leader did not have `hash`.
    fn absent(&mut self, hash: String, now: Instant) {
        if self.absent.len() >= MAX_ABSENT {
            self.absent.retain(|_, until| *until > now);
            if self.absent.len() >= MAX_ABSENT {
                self.absent.clear();
            }
        }
        self.absent.insert(hash, now + ABSENT_FOR);
    }
}

fn apply(
    records: &RwLock<HashMap<String, (ApiKeyRecord, u64)>>,
    record: ApiKeyRecord,
    revision: u64,
) {
    let mut records = records.write().unwrap_or_else(|p| p.into_inner());
    match records.get(&record.hash) {
        Some((_, known)) if *known >= revision => {}
        _ => {
            records.insert(record.hash.clone(), (record, revision));
        }
    }
}

/// Applies `updates`; if that watch ends (NATS restarted, say), watches again with the
/// whole history so that nothing missed in between is lost.
async fn watch(
    records: Weak<RwLock<HashMap<String, (ApiKeyRecord, u64)>>>,
    kv: kv::Store,
    updates: kv::Watch,
) {
    let mut next = Ok(updates);
    loop {
        match next {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Some(records) = records.upgrade() else {
                        return;
                    };
                    let Ok(entry) = entry else { break };
                    let hash = entry.key.trim_start_matches(ENTRY_PREFIX).to_owned();
                    if entry.operation != Operation::Put {
                        // Deleted or purged by an operator: the key no longer works.
                        records
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&hash);
                        continue;
                    }
                    match serde_json::from_slice::<ApiKeyRecord>(&entry.value) {
                        Ok(record) if record.hash == hash => {
                            apply(&records, record, entry.revision);
                        }
                        _ => {
                            tracing::warn!(entry = %entry.key, "unreadable API key record skipped")
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot watch the API keys; retrying"),
        }
        if records.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RETRY).await;
        next = kv.watch_with_history(format!("{ENTRY_PREFIX}>")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_prefixed_and_distinct() {
        let a = format!(
            "{KEY_PREFIX}{}",
            protocol::random::base62(KEY_RANDOM_CHARS).expect("rng")
        );
        let b = format!(
            "{KEY_PREFIX}{}",
            protocol::random::base62(KEY_RANDOM_CHARS).expect("rng")
        );
        assert!(looks_like_key(&a) && looks_like_key(&b));
        assert_ne!(a, b);
        assert_eq!(hash_key(&a).len(), 64);
        assert_ne!(hash_key(&a), hash_key(&b));
        assert!(!looks_like_key("mk_live_short"));
        assert!(!looks_like_key(&a.replace("mk_live_", "mk_test_")));
    }

    #[test]
    fn revoked_and_expired_keys_are_refused_with_a_sentence() {
        let mut record = ApiKeyRecord {
            id: "key_x".to_owned(),
            hash: "h".to_owned(),
            shown: "mk_live_abcd".to_owned(),
            tenant: TenantId::new("acme").expect("tenant"),
            role: Role::Viewer,
            name: "ci".to_owned(),
            created_at_ms: 1,
            expires_at_ms: Some(100),
            revoked_at_ms: None,
            last_used_at_ms: None,
        };
        assert_eq!(record.refusal(99), None);
        assert!(record.refusal(100).expect("expired").contains("expired"));
        record.revoked_at_ms = Some(5);
        assert!(record.refusal(1).expect("revoked").contains("revoked"));
    }

    #[test]
    fn unknown_keys_are_read_within_the_budget_and_absent_ones_not_again() {
        let start = Instant::now();
        let mut misses = Misses::new(start);
        // The burst, then nothing until the budget refills.
        let burst = MISS_READS_PER_SECOND as usize;
        for n in 0..burst {
            assert!(misses.may_read(&format!("h{n}"), start), "read {n}");
        }
        assert!(!misses.may_read("another", start));
        let later = start + Duration::from_millis(100);
        assert!(misses.may_read("another", later), "two reads came back");
        assert!(misses.may_read("a third", later));
        assert!(!misses.may_read("a fourth", later));
        // An absent key is not read again until its answer expires, budget or not.
        let refilled = start + Duration::from_secs(5);
        misses.absent("gone".to_owned(), refilled);
        assert!(!misses.may_read("gone", refilled + Duration::from_secs(1)));
        assert!(misses.may_read("gone", refilled + ABSENT_FOR));
        // The absent answers are bounded.
        for n in 0..=MAX_ABSENT {
            misses.absent(format!("x{n}"), refilled);
        }
        assert!(misses.absent.len() <= MAX_ABSENT);
    }
}
