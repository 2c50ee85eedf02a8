//! Every NATS subject, stream, consumer, bucket and object-store name, in one place.

/// Stream that holds submitted jobs until the coordinator takes them in (and purges them).
pub const STREAM_SUBMIT: &str = "MOCHI_SUBMIT";
/// Subjects captured by [`STREAM_SUBMIT`]: `mochi.submit.<tenant>`.
pub const SUBJECT_SUBMIT_ALL: &str = "mochi.submit.>";
/// Stream of webhook deliveries waiting to be sent (work queue, kept until delivered or
/// given up).
pub const STREAM_WEBHOOKS: &str = "MOCHI_WEBHOOKS";
/// Subjects captured by [`STREAM_WEBHOOKS`]: `mochi.webhooks.<tenant>`.
pub const SUBJECT_WEBHOOKS_ALL: &str = "mochi.webhooks.>";
/// Durable pull consumer the gateways send [`STREAM_WEBHOOKS`] with.
pub const CONSUMER_WEBHOOK_DELIVERY: &str = "mochi-webhook-delivery";
/// Durable pull consumer on the job records' stream from which earlier versions' gateways
/// derived webhook events; a gateway now starts where it stopped, then deletes it.
pub const CONSUMER_WEBHOOK_EVENTS: &str = "mochi-webhook-events";

/// The subject a tenant's webhook deliveries are queued on.
pub fn webhooks_subject(tenant: &str) -> String {
    format!("mochi.webhooks.{tenant}")
}

/// Durable pull consumer the coordinator's intake reads [`STREAM_SUBMIT`] with.
pub const CONSUMER_INTAKE: &str = "mochi-intake";
/// Stream of dead-lettered jobs (retries exhausted), kept for inspection and re-drive.
pub const STREAM_DLQ: &str = "MOCHI_DLQ";
/// Subjects captured by [`STREAM_DLQ`]: `mochi.dlq.<job>`.
pub const SUBJECT_DLQ_ALL: &str = "mochi.dlq.>";
/// KV bucket of job records, keyed by job id; every update is a compare-and-set.
pub const BUCKET_JOBS: &str = "mochi_jobs";
/// KV bucket of node heartbeats, keyed by node id; entries expire when a node goes quiet.
pub const BUCKET_NODES: &str = "mochi_nodes";
/// Object store of finished MP4 files, keyed by job id.
pub const OBJECT_STORE_VIDEOS: &str = "mochi_videos";
/// KV bucket of leases ([`crate::lease`]): the coordinator leader's ([`KEY_LEADER`]; the
/// replica that holds it schedules, the others stand by) and the webhook source's
/// ([`KEY_WEBHOOK_SOURCE`], with its position, [`KEY_WEBHOOK_CURSOR`]).
pub const BUCKET_LEADER: &str = "mochi_leader";
/// Key of the leader lease in [`BUCKET_LEADER`].
pub const KEY_LEADER: &str = "coordinator";
/// Key of the webhook source's lease in [`BUCKET_LEADER`]: the gateway that holds it reads
/// the job records into webhook events.
pub const KEY_WEBHOOK_SOURCE: &str = "webhooks.source";
/// Key in [`BUCKET_LEADER`] of how far the webhook source got: the first `KV_mochi_jobs`
/// sequence it has not finished (JSON).
pub const KEY_WEBHOOK_CURSOR: &str = "webhooks.cursor";
/// KV bucket of the cost model's learned corrections (one JSON document per key), so that
/// a restarted coordinator keeps what finished jobs taught it.
pub const BUCKET_COST: &str = "mochi_cost";
/// Key of the corrections document in [`BUCKET_COST`].
pub const COST_CORRECTIONS_KEY: &str = "corrections";
/// KV bucket of queued jobs' positions and predicted start times (JSON `QueueInfo`, keyed
/// by job id), refreshed by the scheduler as the queue moves.
pub const BUCKET_QUEUE: &str = "mochi_queue";
/// KV bucket of API keys (JSON records keyed by `k.<sha256 of the key>`, never the key
/// itself) and of the gateway's generated link-signing key; only the gateway and the admin
/// user may read it.
pub const BUCKET_KEYS: &str = "mochi_keys";
/// Subjects of per-job progress events: `mochi.events.<job>`.
pub const SUBJECT_EVENTS_ALL: &str = "mochi.events.>";

/// Requests for a job's predicted cost (core NATS request/reply): the gateway asks, the
/// leading coordinator answers from its cost model ([`crate::messages::EstimateRequest`]).
pub const SUBJECT_ESTIMATE: &str = "mochi.estimate";
/// Queue group of the coordinators' request subscriptions ([`SUBJECT_ESTIMATE`],
/// [`SUBJECT_SUBMIT_RPC_ALL`]): one answer per request.
pub const QUEUE_COORDINATORS: &str = "mochi-coordinators";
/// Submissions by request/reply, `mochi.rpc.submit.<tenant>`: the leading coordinator stores
/// the job durably (on [`submit_subject`]) and answers with the job or the error. Not
/// captured by [`STREAM_SUBMIT`], whose acknowledgement would answer first.
pub const SUBJECT_SUBMIT_RPC_ALL: &str = "mochi.rpc.submit.*";

/// The subject a publisher sends a tenant's submission on to get the job back.
pub fn submit_rpc_subject(tenant: &str) -> String {
    format!("mochi.rpc.submit.{tenant}")
}

/// The tenant of a `mochi.rpc.submit.<tenant>` subject, if valid.
pub fn tenant_of_submit_rpc_subject(subject: &str) -> Option<&str> {
    let tenant = subject.strip_prefix("mochi.rpc.submit.")?;
    is_valid_token(tenant).then_some(tenant)
}

/// The subject internal services publish a tenant's submissions on.
pub fn submit_subject(tenant: &str) -> String {
    format!("mochi.submit.{tenant}")
}

/// The subject the gateway publishes one job on, so that the job can be found in
/// [`STREAM_SUBMIT`] by subject until the intake has written its record.
pub fn submit_job_subject(tenant: &str, job_id: &str) -> String {
    format!("mochi.submit.{tenant}.{job_id}")
}

/// The tenant of a submission subject (`mochi.submit.<tenant>[.<job>]`), if well formed.
pub fn tenant_of_submit_subject(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("mochi.submit.")?;
    let tenant = rest.split('.').next()?;
    is_valid_token(tenant).then_some(tenant)
}

/// Object name of an attempt's MP4 (one per attempt: a stale attempt never overwrites a
/// newer one's video).
pub fn video_object(job_id: &str, attempt: u32) -> String {
    format!("{job_id}/{attempt}")
}

/// Object name of the thumbnail beside the MP4 `video_object`: its middle frame, JPEG.
pub fn thumbnail_object(video_object: &str) -> String {
    format!("{video_object}/thumbnail.jpg")
}

/// Object name of the spritesheet beside the MP4 `video_object`: evenly spaced frames in a
/// grid, JPEG.
pub fn spritesheet_object(video_object: &str) -> String {
    format!("{video_object}/spritesheet.jpg")
}

/// Object name of the latent an attempt saved before decoding.
pub fn latent_object(job_id: &str, attempt: u32) -> String {
    format!("{job_id}/latent/{attempt}")
}

/// Object name of the state a paused attempt saved (the latent after its last step).
pub fn paused_object(job_id: &str, attempt: u32) -> String {
    format!("{job_id}/paused/{attempt}")
}

/// The subject a dead-lettered job is copied to.
pub fn dlq_subject(job_id: &str) -> String {
    format!("mochi.dlq.{job_id}")
}

/// The request/reply subject a node takes assignments on.
pub fn node_assign_subject(node_id: &str) -> String {
    format!("mochi.node.{node_id}.assign")
}

/// The subject a node takes cancellations on.
pub fn node_cancel_subject(node_id: &str) -> String {
    format!("mochi.node.{node_id}.cancel")
}

/// The request/reply subject a node takes pause requests on ([`crate::messages::Preempt`]).
pub fn node_preempt_subject(node_id: &str) -> String {
    format!("mochi.node.{node_id}.preempt")
}

/// The request/reply subject a node writes the records of its jobs through
/// ([`crate::messages::RecordWrite`]): nodes may not write `mochi_jobs` themselves, and
/// each node's NATS user may publish only on its own.
pub fn node_record_subject(node_id: &str) -> String {
    format!("mochi.node.{node_id}.record")
}

/// Every node's record-write subject, which the leading coordinator answers.
pub const SUBJECT_NODE_RECORD_ALL: &str = "mochi.node.*.record";

/// The node of a [`node_record_subject`] (`mochi.node.<node>.record`).
pub fn node_of_record_subject(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("mochi.node.")?
        .strip_suffix(".record")
        .filter(|node| is_valid_token(node))
}

/// The subject node `node_id` publishes job `job_id`'s progress events on
/// (`mochi.events.<job>.<node>`): each node's user may publish only under its own id, and
/// the gateway passes on only the events of the node holding the job's lease.
pub fn events_subject(job_id: &str, node_id: &str) -> String {
    format!("mochi.events.{job_id}.{node_id}")
}

/// Every node's progress events of job `job_id` (what a job's event stream subscribes to).
pub fn job_events_subject(job_id: &str) -> String {
    events_subject(job_id, "*")
}

/// The node of an [`events_subject`].
pub fn node_of_events_subject(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("mochi.events.")?;
    let (_, node) = rest.split_once('.')?;
    Some(node).filter(|node| is_valid_token(node))
}

/// The JetStream stream behind KV bucket `bucket` (`KV_<bucket>`).
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The JetStream stream behind object store `bucket` (`OBJ_<bucket>`).
pub fn object_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// The inbox prefix of a client logged in as NATS user `user` (`_INBOX_<user>`): replies to
/// its requests and its consumers' deliveries arrive under it, and only that user may
/// subscribe there, so no other credential can read them.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// Whether `token` may be used as one NATS subject token and KV key (tenant, node id).
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_is_read_from_both_submit_subject_forms() {
        assert_eq!(
            tenant_of_submit_subject(&submit_subject("acme")),
            Some("acme")
        );
        assert_eq!(
            tenant_of_submit_subject(&submit_job_subject("acme", "0192-ab")),
            Some("acme")
        );
        assert_eq!(tenant_of_submit_subject("mochi.submit."), None);
        assert_eq!(
            tenant_of_submit_rpc_subject(&submit_rpc_subject("acme")),
            Some("acme")
        );
        assert_eq!(tenant_of_submit_rpc_subject("mochi.rpc.submit."), None);
        assert_eq!(tenant_of_submit_rpc_subject("mochi.rpc.submit.a.b"), None);
        assert_eq!(tenant_of_submit_subject("mochi.events.x"), None);
    }
}
