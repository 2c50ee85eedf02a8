//! The NATS users of mochi-serve, what each may publish and subscribe to, and the
//! `nats-server` `authorization` block that grants exactly that.
//!
//! One user per role, and one per GPU node (`node-<node id>`): a node's user may take
//! requests, publish heartbeats and write job records only under its own id, so one
//! node's credential cannot touch another node's jobs. Each list below is what the role's
//! code does (subjects from [`crate::names`], JetStream API subjects of the client
//! library), nothing more; the full table with the reasons is in `docs/operations.md`
//! ("NATS users") and what each credential can and cannot do in `docs/security.md`.
//! `mochi up` writes this block for its embedded server and `mochi nats config` prints it
//! for production, so the two never drift; the tests in `tests/nats_users.rs` run every
//! role under it.
//!
//! Every user's replies and consumer deliveries arrive under its own inbox prefix
//! ([`names::inbox_prefix`], `_INBOX_<user>`), the only inbox it may subscribe to: no
//! credential can read another's replies (a job record, an API key, a video).

use std::fmt::Write as _;

use crate::names;

/// A NATS user of mochi-serve: one per role and one per GPU node, plus the operators'
/// `admin`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NatsUser {
    /// Creates the streams, buckets and object store; operator tools (`mochi keys`).
    Admin,
    /// The HTTP API.
    Gateway,
    /// Intake, scheduling, leases.
    Coordinator,
    /// The GPU node with this id (`MOCHI_GPU_NODE__NODE_ID`): one user per node.
    GpuNode(String),
    /// An internal service that publishes jobs on `mochi.submit.<tenant>`.
    Submitter,
}

/// What a user may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Subjects it may publish on (wildcards allowed).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may answer requests it received (publish once to their reply subject).
    pub allow_responses: bool,
}

/// A GPU node id that cannot have a NATS user of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeUserError {
    /// Not 1 to 64 letters, digits, `-` or `_`.
    #[error("GPU node id `{0}` must be 1 to 64 letters, digits, `-` or `_`")]
    Invalid(String),
    /// Two ids map to one password variable (they differ only in case or `-` against `_`),
    /// or one is listed twice.
    #[error(
        "GPU node ids `{0}` and `{1}` would share the password variable {2}: rename one of them"
    )]
    Clash(String, String, String),
}

impl NatsUser {
    /// The users of the roles, in the order of the generated block (the nodes' follow).
    pub const ROLES: [Self; 4] = [
        Self::Admin,
        Self::Gateway,
        Self::Coordinator,
        Self::Submitter,
    ];

    /// Every user of a deployment whose GPU nodes are `nodes`: the roles', then one per
    /// node. Refuses an id that is not a subject token, or two ids whose password variables
    /// would be the same.
    pub fn all(nodes: &[String]) -> Result<Vec<Self>, NodeUserError> {
        let mut users = Self::ROLES.to_vec();
        let mut seen: Vec<(String, &String)> = Vec::new();
        for node in nodes {
            if !names::is_valid_token(node) {
                return Err(NodeUserError::Invalid(node.clone()));
            }
            let user = Self::GpuNode(node.clone());
            let variable = user.password_env_var();
            if let Some((_, earlier)) = seen.iter().find(|(other, _)| *other == variable) {
                return Err(NodeUserError::Clash(
                    (*earlier).clone(),
                    node.clone(),
                    variable,
                ));
            }
            seen.push((variable, node));
            users.push(user);
        }
        Ok(users)
    }

    /// The user name (`MOCHI_NATS__USER`): the role, or `node-<node id>`.
    pub fn name(&self) -> String {
        match self {
            Self::Admin => "admin".to_owned(),
            Self::Gateway => "gateway".to_owned(),
            Self::Coordinator => "coordinator".to_owned(),
            Self::GpuNode(node) => format!("node-{node}"),
            Self::Submitter => "submitter".to_owned(),
        }
    }

    /// The environment variable the generated block reads this user's password from
    /// (`MOCHI_NATS_PASSWORD_GATEWAY`, `MOCHI_NATS_PASSWORD_NODE_GPU_NODE_0`).
    pub fn password_env_var(&self) -> String {
        format!(
            "MOCHI_NATS_PASSWORD_{}",
            self.name().replace('-', "_").to_ascii_uppercase()
        )
    }

    /// What this user may publish and subscribe to.
    pub fn permissions(&self) -> Permissions {
        let mut grants = Grants::new(self);
        match self {
            Self::Admin => admin(&mut grants),
            Self::Gateway => gateway(&mut grants),
            Self::Coordinator => coordinator(&mut grants),
            Self::GpuNode(node) => gpu_node(&mut grants, node),
            Self::Submitter => {
                // `mochi.submit.<tenant>` only: the two-token form is the gateway's, which
                // it reads back by subject to show a job before the intake took it in.
                grants.publish("mochi.submit.*");
                // Or by request/reply, answered with the job or the error.
                grants.publish(names::SUBJECT_SUBMIT_RPC_ALL);
            }
        }
        grants.permissions
    }
}

/// The `authorization { users = [...] }` block for every [`NatsUser`] of a deployment whose
/// GPU nodes are `nodes` ([`NatsUser::all`]), each password read from the server's
/// environment ([`NatsUser::password_env_var`]), so the block holds no secret. There is no
/// `no_auth_user`: a connection without a valid user is refused. Passwords must be ASCII
/// letters and digits starting with a letter (the server parses an environment value as a
/// configuration value: `12345` would become a number).
pub fn authorization_block(nodes: &[String]) -> Result<String, NodeUserError> {
    let mut text = String::from(
        "# Generated by mochi-serve (`mochi nats config`); see docs/operations.md, \"NATS users\".\n\
         authorization {\n  users = [\n",
    );
    for user in NatsUser::all(nodes)? {
        let permissions = user.permissions();
        let _ = writeln!(
            text,
            "    {{\n      user: \"{}\"\n      password: ${}\n      permissions: {{",
            user.name(),
            user.password_env_var()
        );
        let _ = writeln!(
            text,
            "        publish: {{ allow: {} }}",
            subject_list(&permissions.publish)
        );
        let _ = writeln!(
            text,
            "        subscribe: {{ allow: {} }}",
            subject_list(&permissions.subscribe)
        );
        if permissions.allow_responses {
            text.push_str("        allow_responses: true\n");
        }
        text.push_str("      }\n    }\n");
    }
    text.push_str("  ]\n}\n");
    Ok(text)
}

/// Whether `password` can be passed to the server through the environment unchanged:
/// ASCII letters and digits, starting with a letter, at least 16 characters.
pub fn is_valid_password(password: &str) -> bool {
    password.len() >= 16
        && password.bytes().all(|b| b.is_ascii_alphanumeric())
        && password
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
}

/// A configuration array, one quoted subject per line (reviewable in a diff).
/// The NATS user the servers of one cluster authenticate their routes with.
pub const ROUTE_USER: &str = "route";
/// Seconds a server waits for a route to authenticate.
const ROUTE_AUTH_TIMEOUT_S: u32 = 2;

/// Why a `cluster` block cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterBlockError {
    /// The route password is not ASCII letters and digits starting with a letter.
    #[error(
        "the route password must be at least 16 ASCII letters and digits, starting with a letter"
    )]
    Password,
    /// A route is not `host:port`.
    #[error("route `{0}` is not host:port (a DNS name or an IP, and a port)")]
    Route(String),
    /// The cluster name is empty or not letters, digits, `-` and `_`.
    #[error("cluster name `{0}` must be letters, digits, `-` or `_`")]
    Name(String),
    /// No route was given.
    #[error("give at least one route (host:port of each server of the cluster)")]
    NoRoutes,
}

/// The `cluster { }` block of a server of the NATS cluster `name` whose routes authenticate:
/// the server expects [`ROUTE_USER`] with `password` on its cluster `port`, and dials each
/// of `routes` (`host:port`, every server of the cluster; its own is ignored) with the same
/// credentials. nats-server takes a listed route's credentials only from its URL, so the
/// block holds the password: it belongs in a secret, included from the server's
/// configuration (`include ./cluster.conf`), not in a config map.
pub fn cluster_block(
    name: &str,
    port: u16,
    routes: &[String],
    password: &str,
) -> Result<String, ClusterBlockError> {
    if !is_valid_password(password) {
        return Err(ClusterBlockError::Password);
    }
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(ClusterBlockError::Name(name.to_owned()));
    }
    if routes.is_empty() {
        return Err(ClusterBlockError::NoRoutes);
    }
    for route in routes {
        let valid = route.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(ClusterBlockError::Route(route.clone()));
        }
    }
    let mut text = String::from(
        "# Generated by mochi-serve (`mochi nats cluster`); see docs/operations.md, \"NATS routes\".\n\
         # It holds the route password: keep it in a secret.\n",
    );
    let _ = writeln!(text, "cluster {{\n  name: \"{name}\"\n  port: {port}");
    let _ = writeln!(
        text,
        "  authorization {{\n    user: \"{ROUTE_USER}\"\n    password: \"{password}\"\n    timeout: {ROUTE_AUTH_TIMEOUT_S}\n  }}"
    );
    text.push_str("  routes: [\n");
    for route in routes {
        let _ = writeln!(text, "    \"nats-route://{ROUTE_USER}:{password}@{route}\"");
    }
    text.push_str("  ]\n}\n");
    Ok(text)
}

fn subject_list(subjects: &[String]) -> String {
    let mut list = String::from("[\n");
    for subject in subjects {
        let _ = writeln!(list, "          \"{subject}\"");
    }
    list.push_str("        ]");
    list
}

/// Builds a user's permission lists from what its role does.
struct Grants {
    permissions: Permissions,
}

impl Grants {
    fn new(user: &NatsUser) -> Self {
        Self {
            permissions: Permissions {
                // Replies to its requests and its consumers' deliveries (see module docs).
                subscribe: vec![format!("{}.>", names::inbox_prefix(&user.name()))],
                ..Permissions::default()
            },
        }
    }

    fn publish(&mut self, subject: impl Into<String>) {
        let subject = subject.into();
        if !self.permissions.publish.contains(&subject) {
            self.permissions.publish.push(subject);
        }
    }

    fn subscribe(&mut self, subject: impl Into<String>) {
        let subject = subject.into();
        if !self.permissions.subscribe.contains(&subject) {
            self.permissions.subscribe.push(subject);
        }
    }

    /// Look a stream up (`get_stream`, `get_key_value`, `get_object_store`): its
    /// configuration and counters, none of its messages.
    fn open_stream(&mut self, stream: &str) {
        self.publish(format!("$JS.API.STREAM.INFO.{stream}"));
    }

    /// Read single messages of a stream by sequence or subject (`get_raw_message`,
    /// `get_last_raw_message_by_subject`; the streams without direct gets).
    fn read_messages(&mut self, stream: &str) {
        self.open_stream(stream);
        self.publish(format!("$JS.API.STREAM.MSG.GET.{stream}"));
    }

    /// Read the last message of a subject through the direct-get API (how KV and object
    /// store reads go: `$JS.API.DIRECT.GET.<stream>.<subject>`).
    fn direct_get(&mut self, stream: &str) {
        self.open_stream(stream);
        self.publish(format!("$JS.API.DIRECT.GET.{stream}.>"));
    }

    /// Ordered (ephemeral) consumers on a stream: KV watches and key listings, object reads.
    fn ordered_consumers(&mut self, stream: &str) {
        self.publish(format!("$JS.API.CONSUMER.CREATE.{stream}"));
        self.publish(format!("$JS.API.CONSUMER.CREATE.{stream}.>"));
        self.publish(format!("$JS.API.CONSUMER.DELETE.{stream}.>"));
        // Flow-control answers of push consumers.
        self.publish(format!("$JS.FC.{stream}.>"));
    }

    /// Read keys of a KV bucket.
    fn kv_read(&mut self, bucket: &str) {
        self.direct_get(&names::kv_stream(bucket));
    }

    /// Read and watch (or list the keys of) a KV bucket.
    fn kv_watch(&mut self, bucket: &str) {
        self.kv_read(bucket);
        self.ordered_consumers(&names::kv_stream(bucket));
    }

    /// Put, create, update (compare-and-set), delete and purge keys of a KV bucket.
    fn kv_write(&mut self, bucket: &str) {
        self.publish(format!("$KV.{bucket}.>"));
    }

    /// Compare-and-set writes to a KV bucket, with reads from its stream's leader (a
    /// replica's direct get may lag a write already acknowledged: `JobStore::get_latest`).
    fn kv_compare_and_set(&mut self, bucket: &str) {
        self.kv_write(bucket);
        self.read_messages(&names::kv_stream(bucket));
    }

    /// Read objects of an object store.
    fn object_read(&mut self, bucket: &str) {
        let stream = names::object_stream(bucket);
        self.direct_get(&stream);
        self.ordered_consumers(&stream);
    }

    /// Put objects into an object store (chunks, then the metadata).
    fn object_write(&mut self, bucket: &str) {
        self.object_read(bucket);
        self.publish(format!("$O.{bucket}.>"));
    }

    /// Delete objects of an object store (a metadata rollup, then a purge of the chunks).
    fn object_delete(&mut self, bucket: &str) {
        self.object_write(bucket);
        self.purge(&names::object_stream(bucket));
    }

    /// Purge messages of a stream (by subject filter, or below a sequence).
    fn purge(&mut self, stream: &str) {
        self.publish(format!("$JS.API.STREAM.PURGE.{stream}"));
    }

    /// Open every resource of [`crate::jetstream::Resources`] (what a role does at start).
    fn open_resources(&mut self) {
        for stream in [names::STREAM_SUBMIT, names::STREAM_DLQ] {
            self.open_stream(stream);
        }
        for bucket in [
            names::BUCKET_JOBS,
            names::BUCKET_NODES,
            names::BUCKET_LEADER,
        ] {
            self.open_stream(&names::kv_stream(bucket));
        }
        self.open_stream(&names::object_stream(names::OBJECT_STORE_VIDEOS));
    }
}

/// The operator: creates and inspects every JetStream resource, manages API keys.
fn admin(grants: &mut Grants) {
    grants.publish("$JS.API.>");
    grants.publish("$JS.ACK.>");
    grants.publish("$JS.FC.>");
    grants.publish("$KV.>");
    grants.publish("$O.>");
    grants.publish("mochi.>");
    // Operator tools with the default inbox prefix (e.g. the `nats` CLI); no role uses it.
    grants.subscribe("_INBOX.>");
}

fn gateway(grants: &mut Grants) {
    grants.open_resources();
    // Submissions (`mochi.submit.<tenant>.<job>`), read back by subject until taken in.
    grants.publish("mochi.submit.*.*");
    grants.read_messages(names::STREAM_SUBMIT);
    // Dead letters for the admin API.
    grants.read_messages(names::STREAM_DLQ);
    // Job status, cancellation (compare-and-set), re-drive.
    grants.kv_read(names::BUCKET_JOBS);
    grants.kv_compare_and_set(names::BUCKET_JOBS);
    // Tenant quotas count the active jobs from a watch of the records.
    grants.kv_watch(names::BUCKET_JOBS);
    // The fleet (admission, `/v1/backends`) and queue positions (read, and watched by a
    // job's event stream).
    grants.kv_watch(names::BUCKET_NODES);
    grants.kv_watch(names::BUCKET_QUEUE);
    // Each denoising step of a job whose event stream is open (from any node: the stream
    // passes on only the lease holder's).
    grants.subscribe(names::events_subject("*", "*"));
    // Downloads; a deleted job's video, previews and latents.
    grants.object_delete(names::OBJECT_STORE_VIDEOS);
    // A deleted job's dead letter.
    grants.purge(names::STREAM_DLQ);
    // API keys: read, watched, written by the gateway alone (and admin); the shared values
    // there (the generated signing key, webhook secrets) are read back from the leader.
    grants.kv_read(names::BUCKET_KEYS);
    grants.kv_watch(names::BUCKET_KEYS);
    grants.kv_compare_and_set(names::BUCKET_KEYS);
    // Stop a cancelled job on its node.
    grants.publish(names::node_cancel_subject("*"));
    // Ask the leading coordinator for a job's predicted cost.
    grants.publish(names::SUBJECT_ESTIMATE);
    // Webhooks: events derived from the records (an ordered pull consumer on KV_mochi_jobs)
    // by the holder of a lease, which saves its position next to it; queued on
    // MOCHI_WEBHOOKS, sent by a shared durable consumer.
    grants.publish(format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.*",
        names::kv_stream(names::BUCKET_JOBS)
    ));
    grants.kv_read(names::BUCKET_LEADER);
    for key in [names::KEY_WEBHOOK_SOURCE, names::KEY_WEBHOOK_CURSOR] {
        grants.publish(format!("$KV.{}.{key}", names::BUCKET_LEADER));
    }
    grants.publish(names::webhooks_subject("*"));
    grants.open_stream(names::STREAM_WEBHOOKS);
    let delivery = format!(
        "{}.{}",
        names::STREAM_WEBHOOKS,
        names::CONSUMER_WEBHOOK_DELIVERY
    );
    grants.publish(format!("$JS.API.CONSUMER.INFO.{delivery}"));
    grants.publish(format!("$JS.API.CONSUMER.CREATE.{delivery}"));
    grants.publish(format!("$JS.API.CONSUMER.CREATE.{delivery}.>"));
    grants.publish(format!("$JS.API.CONSUMER.MSG.NEXT.{delivery}"));
    grants.publish(format!("$JS.ACK.{delivery}.>"));
    // The shared consumer of earlier versions: where it stopped, then deleted.
    let events = format!(
        "{}.{}",
        names::kv_stream(names::BUCKET_JOBS),
        names::CONSUMER_WEBHOOK_EVENTS
    );
    grants.publish(format!("$JS.API.CONSUMER.INFO.{events}"));
    grants.publish(format!("$JS.API.CONSUMER.DELETE.{events}"));
}

fn coordinator(grants: &mut Grants) {
    grants.open_resources();
    // Intake: ordered pull consumers on MOCHI_SUBMIT (its stream info says where to start).
    grants.ordered_consumers(names::STREAM_SUBMIT);
    grants.publish(format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.*",
        names::STREAM_SUBMIT
    ));
    // On a work-queue MOCHI_SUBMIT (made by an earlier version) its durable pull consumer,
    // fetches and acknowledgements; on a limits stream that consumer is deleted (above).
    let intake = format!("{}.{}", names::STREAM_SUBMIT, names::CONSUMER_INTAKE);
    grants.publish(format!("$JS.API.CONSUMER.INFO.{intake}"));
    grants.publish(format!("$JS.API.CONSUMER.CREATE.{intake}"));
    grants.publish(format!("$JS.API.CONSUMER.CREATE.{intake}.>"));
    grants.publish(format!("$JS.API.CONSUMER.MSG.NEXT.{intake}"));
    grants.publish(format!("$JS.ACK.{intake}.>"));
    // What the intake has taken in, below its batch.
    grants.purge(names::STREAM_SUBMIT);
    // Dead letters.
    grants.publish(names::dlq_subject("*"));
    // Records, heartbeats, the leader lease, cost corrections, queue positions.
    for bucket in [names::BUCKET_JOBS, names::BUCKET_NODES] {
        grants.kv_watch(bucket);
    }
    grants.kv_compare_and_set(names::BUCKET_JOBS);
    for bucket in [
        names::BUCKET_LEADER,
        names::BUCKET_COST,
        names::BUCKET_QUEUE,
    ] {
        grants.kv_read(bucket);
        grants.kv_write(bucket);
    }
    // Requests to nodes: assignments and pauses.
    grants.publish(names::node_assign_subject("*"));
    grants.publish(names::node_preempt_subject("*"));
    // Answer the gateways' cost estimates and the submissions sent by request/reply (stored
    // on the submit subject, then read back from the records).
    grants.subscribe(names::SUBJECT_ESTIMATE);
    grants.subscribe(names::SUBJECT_SUBMIT_RPC_ALL);
    // Write the records of the nodes' jobs for them, after checking the lease.
    grants.subscribe(names::SUBJECT_NODE_RECORD_ALL);
    grants.publish(names::submit_subject("*"));
    grants.permissions.allow_responses = true;
}

fn gpu_node(grants: &mut Grants, node: &str) {
    grants.open_resources();
    // Its own requests and cancellations.
    grants.subscribe(names::node_assign_subject(node));
    grants.subscribe(names::node_cancel_subject(node));
    grants.subscribe(names::node_preempt_subject(node));
    grants.permissions.allow_responses = true;
    // Its heartbeat: its own key.
    grants.publish(format!("$KV.{}.{node}", names::BUCKET_NODES));
    // Its jobs' records, through the coordinator, which checks that the node holds the
    // lease: no direct access to mochi_jobs.
    grants.publish(names::node_record_subject(node));
    // Videos, saved latents and paused state (write, read back, and remove what an
    // abandoned attempt stored).
    grants.object_delete(names::OBJECT_STORE_VIDEOS);
    // Progress events of its jobs, under its own id.
    grants.publish(names::events_subject("*", node));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn may(list: &[String], subject: &str) -> bool {
        list.iter().any(|pattern| matches(pattern, subject))
    }

    /// NATS subject matching: `*` one token, `>` one or more trailing tokens.
    fn matches(pattern: &str, subject: &str) -> bool {
        let mut pattern_tokens = pattern.split('.');
        let mut subject_tokens = subject.split('.');
        loop {
            match (pattern_tokens.next(), subject_tokens.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(s)) if p == s => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn the_cluster_block_authenticates_every_route_and_refuses_bad_input() {
        let password = "Routepassword0123456789";
        let routes = vec!["nats-0.nats:6222".to_owned(), "10.0.0.7:6222".to_owned()];
        let block = cluster_block("mochi", 6222, &routes, password).expect("block");
        assert!(block.contains("user: \"route\""), "{block}");
        assert!(
            block.contains(&format!("password: \"{password}\"")),
            "{block}"
        );
        for route in &routes {
            assert!(
                block.contains(&format!("\"nats-route://route:{password}@{route}\"")),
                "{block}"
            );
        }
        assert_eq!(
            cluster_block("mochi", 6222, &routes, "short"),
            Err(ClusterBlockError::Password)
        );
        for bad in [
            "nats-0.nats",
            "user@host:6222",
            "host:0",
            ":6222",
            "host:port",
        ] {
            assert_eq!(
                cluster_block("mochi", 6222, &[bad.to_owned()], password),
                Err(ClusterBlockError::Route(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(
            cluster_block("mochi", 6222, &[], password),
            Err(ClusterBlockError::NoRoutes)
        );
        assert!(matches!(
            cluster_block("a b", 6222, &routes, password),
            Err(ClusterBlockError::Name(_))
        ));
    }

    fn nodes() -> Vec<String> {
        vec!["n1".to_owned(), "gpu-node-0".to_owned()]
    }

    fn users() -> Vec<NatsUser> {
        NatsUser::all(&nodes()).expect("valid ids")
    }

    #[test]
    fn only_the_gateway_and_admin_touch_the_keys_bucket() {
        for user in users() {
            let permissions = user.permissions();
            let reads = may(&permissions.publish, "$JS.API.STREAM.INFO.KV_mochi_keys")
                || may(
                    &permissions.publish,
                    "$JS.API.DIRECT.GET.KV_mochi_keys.$KV.mochi_keys.k1",
                )
                || may(&permissions.publish, "$KV.mochi_keys.k1");
            let expected = matches!(user, NatsUser::Admin | NatsUser::Gateway);
            assert_eq!(reads, expected, "{user:?}");
        }
    }

    #[test]
    fn only_admin_creates_streams() {
        for user in users() {
            let permissions = user.permissions();
            let creates = may(&permissions.publish, "$JS.API.STREAM.CREATE.MOCHI_SUBMIT")
                || may(&permissions.publish, "$JS.API.STREAM.CREATE.KV_mochi_jobs")
                || may(&permissions.publish, "$JS.API.STREAM.DELETE.KV_mochi_jobs");
            assert_eq!(creates, user == NatsUser::Admin, "{user:?}");
        }
    }

    #[test]
    fn no_role_subscribes_to_submissions_or_another_users_inbox() {
        for user in users() {
            let subscribe = user.permissions().subscribe;
            assert!(!may(&subscribe, "mochi.submit.acme"), "{user:?}");
            for other in users().into_iter().filter(|other| *other != user) {
                let inbox = format!("{}.abc.1", names::inbox_prefix(&other.name()));
                assert!(
                    !may(&subscribe, &inbox),
                    "{user:?} reads {other:?}'s replies"
                );
            }
        }
    }

    #[test]
    fn block_names_every_user_with_an_env_password_and_no_anonymous_user() {
        let block = authorization_block(&nodes()).expect("block");
        for user in users() {
            assert!(block.contains(&format!("user: \"{}\"", user.name())));
            assert!(block.contains(&format!("password: ${}", user.password_env_var())));
        }
        assert!(!block.contains("no_auth_user"));
        assert_eq!(
            NatsUser::GpuNode("gpu-node-0".into()).password_env_var(),
            "MOCHI_NATS_PASSWORD_NODE_GPU_NODE_0"
        );
    }

    #[test]
    fn node_ids_that_are_not_tokens_or_share_a_password_variable_are_refused() {
        for bad in ["", "a.b", "a*", "a>", "a b"] {
            assert_eq!(
                NatsUser::all(&[bad.to_owned()]),
                Err(NodeUserError::Invalid(bad.to_owned()))
            );
        }
        for (first, second) in [("gpu-0", "gpu_0"), ("gpu-0", "GPU-0"), ("a", "a")] {
            assert!(matches!(
                authorization_block(&[first.to_owned(), second.to_owned()]),
                Err(NodeUserError::Clash(..))
            ));
        }
    }

    #[test]
    fn a_node_takes_requests_and_writes_only_under_its_own_id() {
        let permissions = NatsUser::GpuNode("n1".into()).permissions();
        for own in [
            "mochi.node.n1.record",
            "$KV.mochi_nodes.n1",
            "mochi.events.abc.n1",
        ] {
            assert!(may(&permissions.publish, own), "{own}");
        }
        for other in [
            "mochi.node.n2.record",
            "$KV.mochi_nodes.n2",
            "mochi.events.abc.n2",
            "mochi.events.abc",
            "$KV.mochi_jobs.abc",
            "$JS.API.DIRECT.GET.KV_mochi_jobs.$KV.mochi_jobs.abc",
            "mochi.submit.acme",
            "mochi.submit.acme.abc",
            "mochi.node.n2.assign",
        ] {
            assert!(!may(&permissions.publish, other), "{other}");
        }
        for own in [
            "mochi.node.n1.assign",
            "mochi.node.n1.cancel",
            "mochi.node.n1.preempt",
        ] {
            assert!(may(&permissions.subscribe, own), "{own}");
        }
        for other in [
            "mochi.node.n2.assign",
            "mochi.node.n2.cancel",
            "mochi.node.n1.record",
            "mochi.node.n2.record",
        ] {
            assert!(!may(&permissions.subscribe, other), "{other}");
        }
    }

    #[test]
    fn passwords_must_survive_the_server_environment() {
        assert!(is_valid_password("aB3dE5fG7hJ9kL1mN3pQ"));
        assert!(!is_valid_password("12345678901234567890"));
        assert!(!is_valid_password("short1A"));
        assert!(!is_valid_password("has space in it 12345"));
    }

    #[test]
    fn subject_matcher_follows_nats_wildcards() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
    }
}
